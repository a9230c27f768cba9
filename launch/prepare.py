"""Prepares a training dataset (TFDS array_record) for one EMDiffuse task.

The same program as `emdiffuse prepare` (emdiffuse_jax/programs/prepare.py), runnable from a source checkout
without installing the package. `--help` lists its flags.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's package

from emdiffuse_jax.programs import prepare  # noqa: E402

if __name__ == "__main__":
    prepare.run()
