"""The training configurations shipped with the package (one ``get_config()`` file per model).

They live inside the package so that an installed ``emdiffuse train`` finds them from any working directory;
the repository's top-level ``configs/*.py`` re-export them so that ``--config=configs/emdiffuse_n.py`` keeps
working in a checkout. ``--config`` takes a file path, or the name of a shipped config (``emdiffuse_n``,
``configs/emdiffuse_n.py`` where no such file exists), each optionally followed by ``:tiny``.
"""

from __future__ import annotations

import pathlib

_HERE = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped configurations, e.g. ['emdiffuse_n', 'emdiffuse_r', 'vemdiffuse_a', 'vemdiffuse_i']."""
    return sorted(p.stem for p in _HERE.glob("*.py") if not p.stem.startswith("_"))


def resolve(value: str) -> str:
    """``--config`` value -> the config file to load: an existing file as given, else the shipped config of
    that name (``emdiffuse_n``, ``emdiffuse_n.py``, ``configs/emdiffuse_n.py``), keeping any ``:variant``."""
    path, sep, variant = value.partition(":")
    if not path or pathlib.Path(path).is_file():
        return value
    stem = pathlib.PurePath(path).name.removesuffix(".py")
    if stem in names():
        return f"{_HERE / (stem + '.py')}{sep}{variant}"
    return value


# The shipped config that trains each task's model.
FOR_TASK = {"denoise": "emdiffuse_n", "superres": "emdiffuse_r", "vem_i": "vemdiffuse_i", "vem_a": "vemdiffuse_a"}
