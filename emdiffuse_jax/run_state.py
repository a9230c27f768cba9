"""The resume contract shared by the long jobs (launch/predict.py, launch/isotropic.py): the JSON state files
that record what identifies a run, read with errors that name the file, and the comparison that says what
differs when a resume does not fit the recorded run."""

from __future__ import annotations

import json
import os
import pathlib

from emdiffuse_jax.data import io


def write_json(path: pathlib.Path, data: dict) -> None:
    """Replaces `path` atomically (a hidden temporary file renamed over it): a kill leaves old or new."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_json(path: pathlib.Path, what: str, fix: str) -> dict:
    """A JSON state file (report, progress); a damaged one is a DataError naming it and the fix."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise io.DataError(f"{path}: cannot read this {what} ({type(exc).__name__}: {exc}); it is damaged - "
                           f"{fix}") from exc
    if not isinstance(data, dict):
        raise io.DataError(f"{path}: this {what} is not a JSON object; it is damaged - {fix}")
    return data


def settings_difference(saved: dict, wanted: dict) -> str:
    """'key: saved -> wanted' for every run setting that differs (compared as JSON); empty when equal."""
    saved, wanted = json.loads(json.dumps(saved)), json.loads(json.dumps(wanted))
    keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    return "; ".join(f"{k}: {json.dumps(saved.get(k))[:80]} -> {json.dumps(wanted.get(k))[:80]}" for k in keys)


def recorded_checkpoint_step(progress_path: pathlib.Path) -> int | None:
    """The checkpoint step an unfinished run recorded in its progress file (None: no such file, or a .pth).

    A resume loads this step, not the workdir's newest, so a run never mixes outputs of two checkpoints."""
    if not progress_path.is_file():
        return None
    step = read_json(progress_path, "progress file", f"delete {progress_path} to start over") \
        .get("settings", {}).get("checkpoint_step")
    return None if step is None else int(step)


def as_json(settings: dict) -> dict:
    """`settings` as it reads back from a state file (tuples become lists...), so comparisons are exact."""
    return json.loads(json.dumps(settings))
