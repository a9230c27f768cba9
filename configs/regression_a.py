"""The shipped config emdiffuse_jax/configs/regression_a.py (see its docstring), at the path the docs use."""

from emdiffuse_jax.configs.regression_a import get_config  # noqa: F401
