"""Calibrates the uncertainty of a model on held-out pairs (run `emdiffuse predict` on their inputs first).

The same program as `emdiffuse calibrate` (emdiffuse_jax/programs/calibrate.py), runnable from a source checkout
without installing the package. `--help` lists its flags.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's package

from emdiffuse_jax.programs import calibrate  # noqa: E402

if __name__ == "__main__":
    calibrate.run()
