"""Regression baseline (CARE-like) for EMDiffuse-n (denoising): emdiffuse_n.py, objective "regression".

The same UNet, data, patches, optimiser and step schedule as emdiffuse_n.py, without the noisy-target
input channel, trained with an L1 loss to map the condition straight to the target. It predicts through the
same tiling as the diffusion model (launch/predict.py: one deterministic prediction, no uncertainty). Variants
and overrides as emdiffuse_n.py, e.g. --config=configs/regression_n.py:tiny.
"""

from emdiffuse_jax import train_config
from emdiffuse_jax.configs import emdiffuse_n


def get_config(arg: str | None = None):
    config = emdiffuse_n.get_config(arg)
    return train_config.apply_regression(config)
