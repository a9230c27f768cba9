"""EMDiffuse-r: 2D super-resolution x2 (reference EMDiffuse-r.json; the same network as EMDiffuse-n).

The condition is the low-resolution patch upsampled bilinearly to the target size by the data pipeline.
Unlike the reference (its JSON says task "denoise" and resumes from the denoising weights by default),
the task is "superres" and nothing is loaded unless --config.init_from is given.
Transfer learning: as in configs/emdiffuse_n.py, with --config.init_from=<trained superres workdir>.
"""

from emdiffuse_jax import train_config


def get_config(arg: str | None = None):
    config = train_config.base_config("superres")
    config.data.patch_size = 256
    return train_config.apply_variant(config, arg)
