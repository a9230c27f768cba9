"""Reverse-diffusion samplers as pure, jittable functions of a `denoise(x, gamma, slice_index)` function.

The network sees the discrete noise levels gamma_i of the sampling schedule, which may differ from the
training schedule because the network is conditioned on the continuous level (reference 3.1, 3.4).
"""

import jax
import jax.numpy as jnp

from emdiffuse_jax.diffusion.schedules import Schedule


def predict_x0(y_t, noise, gamma):
    """x0 = y_t / sqrt(gamma) - sqrt(1/gamma - 1) * noise, per-sample gamma (B,)."""
    g = gamma[:, None, None, None]
    return jnp.sqrt(1.0 / g) * y_t - jnp.sqrt(1.0 / g - 1.0) * noise


def posterior_step(denoise, y_t, cond, t, schedule: Schedule, slice_index=None, clip_x0=True):
    """Mean and log-variance of q(y_{t-1} | y_t, x0_hat) and the x0 estimate, for per-sample indices t."""
    noise = denoise(jnp.concatenate([cond, y_t], axis=-1), schedule.gammas[t], slice_index)
    column = lambda buf: buf[t][:, None, None, None]  # noqa: E731
    y0_hat = column(schedule.sqrt_recip_gammas) * y_t - column(schedule.sqrt_recipm1_gammas) * noise
    if clip_x0:
        y0_hat = jnp.clip(y0_hat, -1.0, 1.0)
    mean = column(schedule.posterior_mean_coef1) * y0_hat + column(schedule.posterior_mean_coef2) * y_t
    return mean, column(schedule.posterior_log_variance_clipped), y0_hat


def adjust_mean(mean, cond):
    """Shift each sample's mean half-way toward the condition's mean brightness (reference 3.4 `adjust`)."""
    offset = mean.mean(axis=(1, 2, 3), keepdims=True) - cond.mean(axis=(1, 2, 3), keepdims=True)
    return mean - 0.5 * offset


def ddpm_sample(denoise, cond, key, schedule: Schedule, slice_index=None, adjust=False, out_channels=1):
    """Ancestral DDPM sampling with x0 clamping: y_N ~ N(0, I), then N posterior steps to y_0 in [-1, 1].

    With `adjust`, the last 20 % of the steps pull each sample's mean brightness toward the condition's
    (off by default, as in the reference).
    """
    n = schedule.num_steps
    shape = cond.shape[:-1] + (out_channels,)
    key_init, key_steps = jax.random.split(key)
    y = jax.random.normal(key_init, shape, jnp.float32)
    batch = cond.shape[0]

    def step(y_t, inputs):
        i, step_key = inputs
        t = jnp.full((batch,), i, jnp.int32)
        mean, log_var, _ = posterior_step(denoise, y_t, cond, t, schedule, slice_index)
        if adjust:
            mean = jnp.where(i < 0.2 * n, adjust_mean(mean, cond), mean)
        noise = jax.random.normal(step_key, shape, jnp.float32) * (i > 0)
        return mean + jnp.exp(0.5 * log_var) * noise, None

    indices = jnp.arange(n - 1, -1, -1, dtype=jnp.int32)
    y, _ = jax.lax.scan(step, y, (indices, jax.random.split(key_steps, n)))
    return y


def expand_slices(cond, num_slices: int):
    """Repeat a vEM condition batch once per intermediate slice: (B*num_slices, ...) and the slice indices.

    Block order as the reference: all samples for slice 0, then slice 1, and so on.
    """
    batch = cond.shape[0]
    repeated = jnp.tile(cond, (num_slices, 1, 1, 1))
    slice_index = jnp.repeat(jnp.arange(num_slices, dtype=jnp.int32), batch)
    return repeated, slice_index


def collect_slices(y, num_slices: int):
    """Inverse of `expand_slices` for the samples: (B*num_slices, H, W, 1) -> (B, H, W, num_slices)."""
    total, h, w, _ = y.shape
    return y.reshape(num_slices, total // num_slices, h, w).transpose(1, 2, 3, 0)
