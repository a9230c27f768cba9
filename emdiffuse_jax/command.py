"""The ``emdiffuse`` console command: ``emdiffuse PROGRAM [--flags]`` runs one of emdiffuse_jax.programs.

``emdiffuse train --config=emdiffuse_n:tiny --workdir=runs/n`` is the same absl program, with the same
flags and messages, as ``python launch/train.py ...`` in a checkout. ``emdiffuse --help`` lists the
programs; ``emdiffuse PROGRAM --help`` lists a program's flags.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import pathlib
import sys

from emdiffuse_jax import cli

_PROGRAMS_DIR = pathlib.Path(__file__).resolve().parent / "programs"


def programs() -> dict[str, str]:
    """Program name -> the first line of its docstring (read without importing it: imports are slow)."""
    found = {}
    for path in sorted(_PROGRAMS_DIR.glob("*.py")):
        if not path.stem.startswith("_"):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            found[path.stem] = doc.splitlines()[0] if doc else ""
    return found


def usage() -> str:
    listing = "\n".join(f"  {name:<10} {summary}" for name, summary in programs().items())
    return (f"usage: emdiffuse PROGRAM [--flags]   (emdiffuse PROGRAM --help lists its flags)\n\n"
            f"programs:\n{listing}\n")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        sys.exit(0 if len(argv) >= 2 else cli.USAGE_EXIT_CODE)
    name, known = argv[1], programs()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean `emdiffuse {close[0]}`?" if close else f"choose one of: {', '.join(known)}"
        sys.stderr.write(f"error: emdiffuse has no program {name!r}; {hint}\n")
        sys.exit(cli.USAGE_EXIT_CODE)
    program = importlib.import_module(f"emdiffuse_jax.programs.{name}")
    program.run([f"emdiffuse {name}", *argv[2:]])


if __name__ == "__main__":
    main()
