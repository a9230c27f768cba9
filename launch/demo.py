"""The demo on built-in data: ``emdiffuse demo --workdir=runs/demo`` (or ``python launch/demo.py``).

The same program as `emdiffuse demo` (emdiffuse_jax/programs/demo.py), runnable from a source checkout
without installing the package. `--help` lists its flags.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's package

from emdiffuse_jax.programs import demo  # noqa: E402

if __name__ == "__main__":
    demo.run()
