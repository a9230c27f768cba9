"""Test setup: CPU only, 8 simulated devices, shared tiny models and the shared-data locations."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Must precede the first backend use: the mesh tests need several devices.
jax.config.update("jax_num_cpu_devices", 8)
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> pathlib.Path:
    """A path under ../shared, or a clean skip when the shared material is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data absent: {path} (tests that use ../shared skip without it)")
    return path
