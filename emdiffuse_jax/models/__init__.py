"""The EMDiffuse networks: configuration, initialisation and pure apply functions."""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from emdiffuse_jax.models.config import UNetConfig, unet_config
from emdiffuse_jax.models.unet import UNet

__all__ = ["UNet", "UNetConfig", "unet_config", "init_params", "make_apply_fn", "make_denoise_fn",
           "count_params", "abstract_params"]


def _dummy_inputs(cfg: UNetConfig, batch: int = 1):
    size = cfg.downsampling
    x = jnp.zeros((batch, size, size, cfg.in_channel), jnp.float32)
    gamma = jnp.ones((batch,), jnp.float32)
    slice_index = jnp.zeros((batch,), jnp.int32) if cfg.vem else None
    return x, gamma, slice_index


def _init(cfg: UNetConfig, key):
    return UNet(cfg).init(key, *_dummy_inputs(cfg))["params"]


def init_params(unet: Any, key: jax.Array) -> dict:
    """Freshly initialised parameters (Kaiming-normal fan-in, as the reference trains with).

    Parameters do not depend on the image size (the network is fully convolutional), so initialisation runs
    on the smallest valid input, jitted (much faster than eager Flax init on CPU).
    """
    cfg = unet_config(unet)
    return jax.jit(_init, static_argnums=0)(cfg, key)


def abstract_params(unet: Any) -> dict:
    """Shapes and dtypes of the parameters, without allocating them."""
    cfg = unet_config(unet)
    return jax.eval_shape(functools.partial(_init, cfg), jax.random.key(0))


def count_params(unet: Any) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(abstract_params(unet)))


def make_apply_fn(unet: Any, dtype: Any = jnp.float32) -> Callable:
    """`apply(params, x, gamma, slice_index=None, dropout_key=None)` -> predicted noise (B, H, W, out_channel).

    Dropout is active only when `dropout_key` is given (training). `dtype` is the compute dtype
    (bfloat16 on accelerators); parameters stay float32 and the output is float32.
    """
    model = UNet(unet_config(unet), dtype=dtype)

    def apply(params, x, gamma, slice_index=None, dropout_key=None):
        train = dropout_key is not None
        rngs = {"dropout": dropout_key} if train else None
        return model.apply({"params": params}, x, gamma, slice_index, train=train, rngs=rngs)

    return apply


def make_denoise_fn(unet: Any, params: dict, dtype: Any = jnp.float32) -> Callable:
    """A jittable eval-mode `f(x, gamma, slice_index=None)` -> predicted noise, closed over `params`."""
    apply = make_apply_fn(unet, dtype)

    def denoise(x, gamma, slice_index=None):
        return apply(params, x, gamma, slice_index)

    return denoise
