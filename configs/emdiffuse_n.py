"""The shipped config emdiffuse_jax/configs/emdiffuse_n.py (see its docstring), at the path the docs use."""

from emdiffuse_jax.configs.emdiffuse_n import get_config  # noqa: F401
