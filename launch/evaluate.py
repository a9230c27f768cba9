"""Scores predictions (images or volumes, optionally with their std) against the ground truth.

The same program as `emdiffuse evaluate` (emdiffuse_jax/programs/evaluate.py), runnable from a source checkout
without installing the package. `--help` lists its flags.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's package

from emdiffuse_jax.programs import evaluate  # noqa: E402

if __name__ == "__main__":
    evaluate.run()
