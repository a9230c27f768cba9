"""The programs' error boundary: a user's mistake or a failing disk ends the program with one line that
names the file and the fix, and exit status 1, never a traceback (usage errors are `cli.run`'s, status 2).

User errors are our own `DataError` / `ValueError` messages (they already name the file and the fix),
missing files, a NaN loss, and the operating system's `OSError`s (unreadable input, read-only or full file
system, permission denied), which are reworded here with the file they concern.
"""

from __future__ import annotations

import contextlib
import errno
import sys

_OS_FIXES = {
    errno.ENOSPC: "no space left on the device; free space or choose an output on another disk",
    errno.EDQUOT: "disk quota exceeded; free space or choose an output on another disk",
    errno.EROFS: "read-only file system; choose a writable location",
    errno.EACCES: "permission denied; make it accessible or choose another location",
    errno.EPERM: "operation not permitted; make it accessible or choose another location",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "is a folder where a file was expected; choose another path",
    errno.ENOENT: "no such file or folder",
    errno.EIO: "input/output error; the disk or network file system failed - check it and rerun",
}


def describe(err: BaseException) -> str:
    """One line for a user error: the file, the problem, the fix."""
    if isinstance(err, OSError) and err.errno is not None:
        fix = _OS_FIXES.get(err.errno, err.strerror or type(err).__name__)
        where = err.filename if err.filename is not None else "a file"
        return f"{where}: {fix}"
    text = " ".join((str(err) or type(err).__name__).split())   # one line whatever the message held
    if "No space left on device" in text:   # e.g. Orbax/tensorstore report a full disk as a ValueError
        return f"{text[:400]}: no space left on the device; free space or choose an output on another disk"
    return text


@contextlib.contextmanager
def clean_exit():
    """Runs a program's body: user errors exit with status 1 and `error: <one line>` on stderr."""
    try:
        yield
    except (ValueError, OSError, MemoryError, FloatingPointError) as err:
        sys.exit(f"error: {describe(err)}")

