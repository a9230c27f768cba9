"""EMDiffuse-n: 2D denoising of SEM images (reference EMDiffuse-n.json).

Usage: --config=configs/emdiffuse_n.py (full model) or --config=configs/emdiffuse_n.py:tiny (CPU minutes).
Transfer learning (the reference's EMDiffuse-n-transfer setup): set --config.init_from to a trained workdir
or a converted reference .pth and train a few thousand steps on the new sample's pairs, e.g.
--config.init_from=experiments/brain --config.data.input_path=new/noisy --config.data.target_path=new/clean
--config.num_steps=5000 --config.optim.warmup_steps=100 --config.eval.every_steps=1000.
"""

from emdiffuse_jax import train_config


def get_config(arg: str | None = None):
    config = train_config.base_config("denoise")
    # Reference differences (section 1.3): 256 px patches, in/out 2/1 channels, test schedule 1000 steps.
    config.data.patch_size = 256
    return train_config.apply_variant(config, arg)
