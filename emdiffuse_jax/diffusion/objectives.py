"""The training objective (reference sections 3.2 and 3.3): noise prediction at a continuous noise level.

`denoise(x, gamma, slice_index)` is any function returning the predicted noise; x = [cond, noisy target].
"""

import jax
import jax.numpy as jnp


def sample_noise_levels(key: jax.Array, batch: int, gammas: jax.Array) -> jax.Array:
    """gamma ~ U(gammas[t], gammas[t-1]) with t ~ U{1, ..., N-1} per sample (t = 0 is never drawn)."""
    key_t, key_u = jax.random.split(key)
    t = jax.random.randint(key_t, (batch,), 1, gammas.shape[0])
    low, high = gammas[t], gammas[t - 1]
    return low + (high - low) * jax.random.uniform(key_u, (batch,))


def noise_prediction_loss(denoise, y0, cond, key, gammas, slice_index=None) -> jax.Array:
    """Mean squared error between the true and the predicted noise, over all elements."""
    key_gamma, key_noise = jax.random.split(key)
    gamma = sample_noise_levels(key_gamma, y0.shape[0], gammas)
    noise = jax.random.normal(key_noise, y0.shape, y0.dtype)
    g = gamma[:, None, None, None]
    y_noisy = jnp.sqrt(g) * y0 + jnp.sqrt(1 - g) * noise
    predicted = denoise(jnp.concatenate([cond, y_noisy], axis=-1), gamma, slice_index)
    return jnp.mean((predicted - noise) ** 2)


def vem_noise_prediction_loss(denoise, targets, cond, key, gammas) -> jax.Array:
    """The vEM loss: one intermediate slice c ~ U{0, ..., z-2} per sample, targets (B, H, W, z-1)."""
    key_slice, key_loss = jax.random.split(key)
    batch, num_slices = targets.shape[0], targets.shape[-1]
    slice_index = jax.random.randint(key_slice, (batch,), 0, num_slices)
    y0 = jnp.take_along_axis(targets, slice_index[:, None, None, None], axis=-1)
    return noise_prediction_loss(denoise, y0, cond, key_loss, gammas, slice_index)
