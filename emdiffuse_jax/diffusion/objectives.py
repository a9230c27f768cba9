"""Training objectives: the reference's noise prediction (sections 3.2, 3.3) and the regression baseline.

`denoise(x, gamma, slice_index)` is any function returning the predicted noise; x = [cond, noisy target].
The regression baseline (config.objective = "regression") uses the same UNet without the noisy-target
channel: `predict(cond, gamma, slice_index)` returns the target itself, trained with an L1 loss.

Parametrisation (config.parametrization): "direct" (the reference's, the default: the target is diffused)
or "residual": the diffused variable is r = (target - estimate) / 2, the difference to a simple estimate
the condition gives (the input for denoising, the bilinearly upsampled input for super-resolution, the
linear interpolation of the two input slices for vEM), halved so that it lies in [-1, 1] like an image.
A sample is then estimate + 2 r, so a partly trained model whose r is near 0 returns about the estimate.
"""

import jax
import jax.numpy as jnp


def sample_noise_levels(key: jax.Array, batch: int, gammas: jax.Array) -> jax.Array:
    """gamma ~ U(gammas[t], gammas[t-1]) with t ~ U{1, ..., N-1} per sample (t = 0 is never drawn)."""
    key_t, key_u = jax.random.split(key)
    t = jax.random.randint(key_t, (batch,), 1, gammas.shape[0])
    low, high = gammas[t], gammas[t - 1]
    return low + (high - low) * jax.random.uniform(key_u, (batch,))


PARAMETRIZATIONS = ("direct", "residual")


def simple_estimate(cond, slice_index=None, num_slices: int | None = None) -> jax.Array:
    """What the condition (B, H, W, C) alone suggests for the target (B, H, W, 1).

    2D (slice_index None): the condition image itself. vEM: channels [later, earlier] interpolated linearly
    at the depth (c + 1) / (num_slices + 1) of slice c = slice_index (B,).
    """
    if slice_index is None:
        return cond[..., :1]
    w = ((slice_index.astype(jnp.float32) + 1.0) / (num_slices + 1))[:, None, None, None]
    return (1.0 - w) * cond[..., 1:2] + w * cond[..., 0:1]


def to_residual(y0, estimate):
    """The diffused variable of the residual parametrisation, in [-1, 1] for y0 and estimate in [-1, 1]."""
    return (y0 - estimate) / 2.0


def from_residual(r, estimate):
    """Inverse of to_residual: a sample of the target from a sample of the residual."""
    return estimate + 2.0 * r


def noise_prediction_loss(denoise, y0, cond, key, gammas, slice_index=None, *, residual: bool = False,
                          num_slices: int | None = None) -> jax.Array:
    """Mean squared error between the true and the predicted noise, over all elements.

    residual: diffuse to_residual(y0, simple_estimate(cond, ...)) instead of y0 (num_slices for vEM).
    """
    if residual:
        y0 = to_residual(y0, simple_estimate(cond, slice_index, num_slices))
    key_gamma, key_noise = jax.random.split(key)
    gamma = sample_noise_levels(key_gamma, y0.shape[0], gammas)
    noise = jax.random.normal(key_noise, y0.shape, y0.dtype)
    g = gamma[:, None, None, None]
    y_noisy = jnp.sqrt(g) * y0 + jnp.sqrt(1 - g) * noise
    predicted = denoise(jnp.concatenate([cond, y_noisy], axis=-1), gamma, slice_index)
    return jnp.mean((predicted - noise) ** 2)


def vem_noise_prediction_loss(denoise, targets, cond, key, gammas, *, residual: bool = False) -> jax.Array:
    """The vEM loss: one intermediate slice c ~ U{0, ..., z-2} per sample, targets (B, H, W, z-1)."""
    key_slice, key_loss = jax.random.split(key)
    batch, num_slices = targets.shape[0], targets.shape[-1]
    slice_index = jax.random.randint(key_slice, (batch,), 0, num_slices)
    y0 = jnp.take_along_axis(targets, slice_index[:, None, None, None], axis=-1)
    return noise_prediction_loss(denoise, y0, cond, key_loss, gammas, slice_index, residual=residual,
                                 num_slices=num_slices)


# ------------------------------------------------------------------------------------------------------
# The regression baseline (CARE-like): the same UNet maps the condition straight to the target.

OBJECTIVES = ("diffusion", "regression")
REGRESSION_GAMMA = 1.0   # the network's noise-level input, held at "no noise" (a learned constant bias)


def regression_predict(predict, cond, slice_index=None) -> jax.Array:
    """The regression model's output for condition `cond` (B, H, W, Cc): predict(cond, gamma=1, slice_index)."""
    gamma = jnp.full((cond.shape[0],), REGRESSION_GAMMA, cond.dtype)
    return predict(cond, gamma, slice_index)


def regression_loss(predict, target, cond, slice_index=None) -> jax.Array:
    """Mean absolute error (L1, as CARE) between the prediction from the condition and the target."""
    return jnp.mean(jnp.abs(regression_predict(predict, cond, slice_index) - target))


def vem_regression_loss(predict, targets, cond, key) -> jax.Array:
    """The vEM regression loss: one intermediate slice c ~ U{0, ..., z-2} per sample, as the diffusion loss."""
    batch, num_slices = targets.shape[0], targets.shape[-1]
    slice_index = jax.random.randint(key, (batch,), 0, num_slices)
    y0 = jnp.take_along_axis(targets, slice_index[:, None, None, None], axis=-1)
    return regression_loss(predict, y0, cond, slice_index)


def regression_sample(predict, cond, key, slice_index=None) -> jax.Array:
    """The regression model as a "sampler" (same signature as the diffusion samplers, so it runs through the
    same tiling and stitching): one deterministic prediction, the key unused."""
    del key
    return regression_predict(predict, cond, slice_index)


def residual_sampler(sample_fn, num_slices: int | None = None):
    """A sampler of the target from a sampler of the residual (same signature as the samplers)."""
    def sample(denoise, cond, key, slice_index=None):
        return from_residual(sample_fn(denoise, cond, key, slice_index),
                             simple_estimate(cond, slice_index, num_slices))
    return sample


def parametrization_of(meta: dict) -> str:
    """The parametrisation a checkpoint was trained with; 'direct' (the reference's) when not recorded."""
    value = (meta.get("config") or {}).get("parametrization", "direct")
    if value not in PARAMETRIZATIONS:
        raise ValueError(f"checkpoint parametrization {value!r} is not one of {PARAMETRIZATIONS}")
    return value


def objective_of(meta: dict) -> str:
    """The objective a checkpoint was trained with (its meta record); 'diffusion' for published weights."""
    objective = (meta.get("config") or {}).get("objective", "diffusion")
    if objective not in OBJECTIVES:
        raise ValueError(f"checkpoint objective {objective!r} is not one of {OBJECTIVES}")
    return objective
