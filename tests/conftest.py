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


TINY_UNET = dict(in_channel=2, out_channel=1, inner_channel=16, channel_mults=(1, 2, 2), attn_res=(2,),
                 num_head_channels=16, res_blocks=1, dropout=0.0, image_size=32)
TINY_VEM_UNET = dict(TINY_UNET, in_channel=3, vem=True)


@pytest.fixture(scope="session")
def tiny_unet():
    """The golden tiny 2D network's configuration (reference layout, 345,153 parameters)."""
    from emdiffuse_jax.models import unet_config
    return unet_config(TINY_UNET)


@pytest.fixture(scope="session")
def tiny_vem_unet():
    from emdiffuse_jax.models import unet_config
    return unet_config(TINY_VEM_UNET)


@pytest.fixture(scope="session")
def tiny_params(tiny_unet):
    """Initialised once per test session and shared, since initialisation compiles the whole network."""
    from emdiffuse_jax.models import init_params
    return init_params(tiny_unet, jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_vem_params(tiny_vem_unet):
    from emdiffuse_jax.models import init_params
    return init_params(tiny_vem_unet, jax.random.key(1))
