"""Regression baseline (CARE-like) for vEMDiffuse-i (isotropic reconstruction): configs/vemdiffuse_i.py, objective "regression".

The same UNet, data, patches, optimiser and step schedule as configs/vemdiffuse_i.py, without the noisy-target
input channel, trained with an L1 loss to map the condition straight to the target. It predicts through the
same tiling as the diffusion model (launch/isotropic.py: one deterministic prediction, no uncertainty).
Variants and overrides as configs/vemdiffuse_i.py, e.g. --config=configs/regression_i.py:tiny.
"""

import pathlib

from emdiffuse_jax import train_config


def get_config(arg: str | None = None):
    config = train_config.config_from_file(pathlib.Path(__file__).with_name("vemdiffuse_i.py"), arg)
    return train_config.apply_regression(config)
