"""The shipped config emdiffuse_jax/configs/regression_i.py (see its docstring), at the path the docs use."""

from emdiffuse_jax.configs.regression_i import get_config  # noqa: F401
