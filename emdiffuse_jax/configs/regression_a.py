"""Regression baseline (CARE-like) for vEMDiffuse-a (axial interpolation): vemdiffuse_a.py, objective "regression".

The same UNet, data, patches, optimiser and step schedule as vemdiffuse_a.py, without the noisy-target
input channel, trained with an L1 loss to map the condition straight to the target. It predicts through the
same tiling as the diffusion model (launch/isotropic.py: one deterministic prediction, no uncertainty).
Variants and overrides as vemdiffuse_a.py, e.g. --config=configs/regression_a.py:tiny.
"""

from emdiffuse_jax import train_config
from emdiffuse_jax.configs import vemdiffuse_a


def get_config(arg: str | None = None):
    config = vemdiffuse_a.get_config(arg)
    return train_config.apply_regression(config)
