"""2D restoration with self-assessment (EMDiffuse-n denoising / EMDiffuse-r 2x super-resolution).

The same program as `emdiffuse predict` (emdiffuse_jax/programs/predict.py), runnable from a source checkout
without installing the package. `--help` lists its flags.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's package

from emdiffuse_jax.programs import predict  # noqa: E402

if __name__ == "__main__":
    predict.run()
