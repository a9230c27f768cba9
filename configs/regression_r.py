"""The shipped config emdiffuse_jax/configs/regression_r.py (see its docstring), at the path the docs use."""

from emdiffuse_jax.configs.regression_r import get_config  # noqa: F401
