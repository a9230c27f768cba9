"""Trains an EMDiffuse model.

The same program as `emdiffuse train` (emdiffuse_jax/programs/train.py), runnable from a source checkout
without installing the package. `--help` lists its flags.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's package

from emdiffuse_jax.programs import train  # noqa: E402

if __name__ == "__main__":
    train.run()
