"""Building blocks of the EMDiffuse UNet (reference section 2.3), NHWC.

Submodule names are chosen so that every parameter maps to one key of a reference state dict
(see `emdiffuse_jax.convert`).
"""

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from emdiffuse_jax.models.conv import conv2d


def kaiming_std(shape) -> float:
    """Kaiming-normal, fan-in: std sqrt(2 / fan_in), fan_in = all but the last (output) axis."""
    return math.sqrt(2.0 / math.prod(shape[:-1]))


class _KernelSupply:
    """Kaiming kernels handed out in the order the initialisers ask for them (`kernels`); with kernels None
    zeros of the asked shapes. Either way `shapes` records the asked shapes in order."""

    def __init__(self, kernels=None):
        self.kernels, self.shapes = kernels, []

    def take(self, shape, dtype):
        self.shapes.append(tuple(shape))
        if self.kernels is None:
            return jnp.zeros(shape, dtype)
        return jnp.asarray(self.kernels[len(self.shapes) - 1], dtype)


_supply: _KernelSupply | None = None


@contextlib.contextmanager
def supplied_kaiming_kernels(kernels=None):
    """Inside, `kaiming_normal` returns the given kernels in order instead of drawing (kernels None: zeros;
    the yielded object's `.shapes` lists what was asked for). Only tracing inside the context is affected.

    Why: a jitted Flax init of the full UNet makes 105 Kaiming draws among 326 parameters, and XLA:CPU
    compiles each draw's random-bit generator as its own kernel: 25 s on an idle 2-core CPU, minutes on a
    loaded one. `models.init_params` instead draws all kernels at once (`draw_kaiming_kernels`).
    """
    global _supply
    previous, _supply = _supply, _KernelSupply(kernels)
    try:
        yield _supply
    finally:
        _supply = previous


def draw_kaiming_kernels(key: jax.Array, shapes) -> list:
    """Kaiming-normal kernels of the given shapes from one standard-normal draw, sliced and scaled on the
    host (inside a jit or eval_shape, where the key is traced, on the device instead)."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.jit(lambda k: jax.random.normal(k, (sum(sizes),), jnp.float32))(key)
    try:
        flat = np.asarray(flat)
    except jax.errors.TracerArrayConversionError:
        pass
    bounds = np.cumsum([0] + sizes)
    return [kaiming_std(shape) * flat[lo:hi].reshape(shape) for shape, lo, hi in zip(shapes, bounds, bounds[1:])]


def kaiming_normal(key, shape, dtype=jnp.float32):
    """Kaiming-normal, fan-in (N(0, 2 / fan_in)): how the reference initialises every conv and linear layer."""
    if _supply is None:
        return kaiming_std(shape) * jax.random.normal(key, shape, dtype)
    return _supply.take(shape, dtype)


def sinusoidal_embedding(values: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal features of a scalar per sample: [cos(v w_i)..., sin(v w_i)...], w_i = max_period^(-i/half).

    The value is used raw (the noise level gamma in (0, 1], or a slice index), cos first, as the reference.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = values.reshape(-1, 1).astype(jnp.float32) * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Conv2D(nn.Module):
    """Stride-1 'SAME' convolution with bias."""

    features: int
    kernel_size: int = 3
    zero_init: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.zero_init else kaiming_normal
        kernel = self.param("kernel", init, (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = x.astype(self.dtype)
        return conv2d(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


def group_norm(x, groups: int, name: str, dtype: Any):
    """GroupNorm (eps 1e-5, affine) computed in float32 and returned in the compute dtype."""
    y = nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False, dtype=jnp.float32,
                     name=name)(x.astype(jnp.float32))
    return y.astype(dtype)


def _dense(features: int, name: str, dtype: Any, zero_init: bool = False) -> nn.Dense:
    init = nn.initializers.zeros if zero_init else kaiming_normal
    return nn.Dense(features, kernel_init=init, dtype=dtype, name=name)


class EmbedMLP(nn.Module):
    """Linear -> SiLU -> Linear: the noise-level (and slice-index) embedding MLP, always in float32.

    Under a bfloat16 compute dtype (8-bit mantissa) the sinusoidal features of nearby noise levels round to
    the same values: 0.9995 and 0.9999, where the last sampling steps live, would give identical
    embeddings. The MLP is a negligible share of the network's work, so it stays float32 whatever the
    compute dtype, and its float32 output is what the residual blocks receive.
    """

    features: int

    @nn.compact
    def __call__(self, e):
        e = _dense(self.features, "dense_0", jnp.float32)(e.astype(jnp.float32))
        return _dense(self.features, "dense_2", jnp.float32)(nn.silu(e))


def downsample(x):
    """2x2 average pooling, stride 2."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x):
    """Nearest-neighbour x2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
    """GN-SiLU-(resample)-conv, FiLM scale/shift from the embedding on the second GN, dropout, conv, skip."""

    out_channels: int
    groups: int
    dropout: float
    resample: str | None = None  # None, "up" or "down"
    zero_init: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.silu(group_norm(x, self.groups, "in_norm", self.dtype))
        if self.resample == "up":
            h, x = upsample(h), upsample(x)
        elif self.resample == "down":
            h, x = downsample(h), downsample(x)
        h = Conv2D(self.out_channels, dtype=self.dtype, name="in_conv")(h)

        film = _dense(2 * self.out_channels, "emb_dense", self.dtype)(nn.silu(emb))
        scale, shift = jnp.split(film[:, None, None, :], 2, axis=-1)
        h = group_norm(h, self.groups, "out_norm", self.dtype) * (1 + scale) + shift
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = Conv2D(self.out_channels, zero_init=self.zero_init, dtype=self.dtype, name="out_conv")(h)

        if x.shape[-1] != self.out_channels:
            x = Conv2D(self.out_channels, kernel_size=1, dtype=self.dtype, name="skip")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, with the reference's legacy QKV layout.

    The qkv projection's 3C outputs are grouped per head first ([q_h, k_h, v_h] for head h), not per q/k/v,
    which matters when porting weights (reference 2.3).
    """

    num_head_channels: int
    groups: int
    zero_init: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        heads = c // self.num_head_channels
        d = self.num_head_channels
        qkv = _dense(3 * c, "qkv", self.dtype)(group_norm(x, self.groups, "norm", self.dtype))
        qkv = qkv.reshape(b, hgt * wid, heads, 3 * d)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        # softmax(q k^T / sqrt(d)) v with float32 scores (the reference scales q and k by d^-1/4 each).
        # jax.nn.dot_product_attention picks cuDNN flash attention on GPUs for 16-bit inputs, whose
        # memory grows linearly with the number of positions, and XLA's exact computation elsewhere.
        a = jax.nn.dot_product_attention(q, k, v, scale=d ** -0.5).reshape(b, hgt, wid, c)
        return x + _dense(c, "proj_out", self.dtype, zero_init=self.zero_init)(a)
