"""Regression baseline (CARE-like) for vEMDiffuse-i (isotropic reconstruction): vemdiffuse_i.py, objective "regression".

The same UNet, data, patches, optimiser and step schedule as vemdiffuse_i.py, without the noisy-target
input channel, trained with an L1 loss to map the condition straight to the target. It predicts through the
same tiling as the diffusion model (launch/isotropic.py: one deterministic prediction, no uncertainty).
Variants and overrides as vemdiffuse_i.py, e.g. --config=configs/regression_i.py:tiny.
"""

from emdiffuse_jax import train_config
from emdiffuse_jax.configs import vemdiffuse_i


def get_config(arg: str | None = None):
    config = vemdiffuse_i.get_config(arg)
    return train_config.apply_regression(config)
