"""Building blocks of the EMDiffuse UNet (reference section 2.3), NHWC.

Submodule names are chosen so that every parameter maps to one key of a reference state dict
(see `emdiffuse_jax.convert`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emdiffuse_jax.models.conv import conv2d

# Kaiming-normal, fan-in (N(0, 2 / fan_in)): how the reference initialises every conv and linear layer.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


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
        scale = d ** -0.25
        logits = jnp.einsum("bthd,bshd->bhts", q * scale, k * scale)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        a = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, hgt, wid, c)
        return x + _dense(c, "proj_out", self.dtype, zero_init=self.zero_init)(a)
