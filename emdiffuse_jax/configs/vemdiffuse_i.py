"""vEMDiffuse-i: axial interpolation trained on an isotropic volume subsampled along z (vEMDiffuse-i.json).

Default training data: the isotropic FIB-SEM stack ../shared/data/fibsem-medulla-250.tif next to the repository
when present, else the built-in synthetic phantoms (train.py logs which). z_factor 6 (the README's -z 6): the
network generates the 5 slices between two inputs; use the same z_factor at prediction time.
Transfer learning: --config.init_from=<trained vem_i workdir> with --config.data.input_path=<new volume>.
"""

import pathlib

from emdiffuse_jax import train_config

# ../shared next to a source checkout (absent in an installed package: phantoms then).
_SHARED_STACK = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fibsem-medulla-250.tif"


def get_config(arg: str | None = None):
    config = train_config.base_config("vem_i")
    config.data.patch_size = 256
    config.data.z_factor = 6
    config.data.input_path = str(_SHARED_STACK) if _SHARED_STACK.exists() else ""
    config.optim.warmup_steps = 1000   # the reference had none for vEM; a short warm-up is harmless
    return train_config.apply_variant(config, arg)
