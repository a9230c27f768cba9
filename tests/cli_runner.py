"""Runs one launch script on many command lines in one process (tests/test_bad_inputs.py drives it).

  python tests/cli_runner.py SCRIPT CASES.json RESULTS.json

Each case: {"id", "argv", "watch": [paths], "fault": null | {"errno": "ENOSPC", "prefix": path, "on": "write"}}.
Every case runs the script as `__main__` with that sys.argv (its program module, imported once, has its
absl flags reset and parsed afresh), as on the command line; SystemExit gives the exit status and the
message a shell would see. Each result records the
exit status, stderr, stdout, a traceback if one escaped, and whether every watched path (inputs, and the
output) is byte-for-byte as before. A fault makes opening (for writing or reading) and creating folders
under `prefix` fail with that errno, as a full, read-only or forbidden file system would; this works
whoever runs the tests, root included.
"""

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import pathlib
import runpy
import sys
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def snapshot(path: str) -> dict:
    p = pathlib.Path(path)
    if not p.exists():
        return {"exists": False}
    if p.is_file():
        return {"file": hashlib.sha256(p.read_bytes()).hexdigest()}
    return {str(q.relative_to(p)): hashlib.sha256(q.read_bytes()).hexdigest() if q.is_file() else "dir"
            for q in sorted(p.rglob("*"))}


@contextlib.contextmanager
def injected(fault):
    if not fault:
        yield
        return
    code, prefix, on = getattr(errno, fault["errno"]), os.path.abspath(fault["prefix"]), fault["on"]

    def hit(path, writing):
        try:
            inside = os.path.abspath(os.fspath(path)).startswith(prefix)
        except TypeError:  # a file descriptor
            return False
        return inside and writing == (on == "write")

    def fail(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_mkdir, real_access = builtins.open, os.mkdir, os.access

    def fake_open(file, mode="r", *args, **kwargs):
        if hit(file, any(c in mode for c in "wax+")):
            fail(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if hit(path, True):
            fail(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_access(path, mode, *args, **kwargs):  # what a non-root user sees on a forbidden/read-only disk
        if fault["errno"] in ("EACCES", "EROFS") and hit(path, bool(mode & os.W_OK)):
            return False
        return real_access(path, mode, *args, **kwargs)

    builtins.open, os.mkdir, os.access = fake_open, fake_mkdir, fake_access
    io.open = fake_open
    try:
        yield
    finally:
        builtins.open, os.mkdir, os.access = real_open, real_mkdir, real_access
        io.open = real_open


def run_case(flags, script, case) -> dict:
    """Runs launch/<script>.py as `python launch/<script>.py ARGV` would, inside this process."""
    before = {p: snapshot(p) for p in case.get("watch", [])}
    flags.FLAGS.unparse_flags()   # the program module is imported once: its flags are parsed afresh
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:   # a config's overrides are defined
        delattr(flags.FLAGS, name)                                      # when it is parsed: again next time
    err, out = io.StringIO(), io.StringIO()
    rc, escaped = 0, None
    argv = sys.argv
    sys.argv = [str(ROOT / "launch" / f"{script}.py"), *case["argv"]]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), injected(case.get("fault")):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
                rc = 1
            else:
                rc = exc.code or 0
        except BaseException:  # noqa: BLE001 - what escaped is what the test must see
            escaped = traceback.format_exc()
            rc = -1
        finally:
            sys.argv = argv
    changed = [p for p, snap in before.items() if snapshot(p) != snap]
    return {"id": case["id"], "rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue(), "traceback": escaped,
            "changed": changed}


def main() -> None:
    script, cases_path, results_path = sys.argv[1:4]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import flags
    cases = json.loads(pathlib.Path(cases_path).read_text())
    results = [run_case(flags, script, case) for case in cases]
    pathlib.Path(results_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
