"""The shipped config emdiffuse_jax/configs/vemdiffuse_i.py (see its docstring), at the path the docs use."""

from emdiffuse_jax.configs.vemdiffuse_i import get_config  # noqa: F401
