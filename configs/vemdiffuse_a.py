"""The shipped config emdiffuse_jax/configs/vemdiffuse_a.py (see its docstring), at the path the docs use."""

from emdiffuse_jax.configs.vemdiffuse_a import get_config  # noqa: F401
