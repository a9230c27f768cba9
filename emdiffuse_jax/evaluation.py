"""Image-quality metrics (PSNR, SSIM, MAE) and validation with the EMA weights and the test-time sampler.

Fixes the reference's validation, which sampled with the 2000-step training schedule and the online
weights: here validation uses the EMA parameters and the test schedule with a configurable, small number
of steps. Images are NHWC in [-1, 1]; metrics are per image (averaged over channels for vEM slices).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

DATA_RANGE = 2.0  # images live in [-1, 1]


def mae(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error per image, (B,)."""
    return jnp.mean(jnp.abs(x - y), axis=(1, 2, 3))


def psnr(x: jax.Array, y: jax.Array, data_range: float = DATA_RANGE) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image, (B,)."""
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-12))


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable 'valid' Gaussian filter of (N, H, W) images."""
    k = window.size
    h = x.shape[1] - k + 1
    w = x.shape[2] - k + 1
    rows = sum(window[i] * x[:, i:i + h, :] for i in range(k))
    return sum(window[j] * rows[:, :, j:j + w] for j in range(k))


def ssim(x: jax.Array, y: jax.Array, data_range: float = DATA_RANGE) -> jax.Array:
    """Structural similarity per image, (B,): Gaussian window sigma 1.5 (11 taps), K1 0.01, K2 0.03.

    Same definition as scikit-image's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False)``: the mean of the SSIM map away from the border; channels averaged.
    """
    b, hh, ww, c = x.shape
    win = _gaussian_window()
    if min(hh, ww) < win.size:
        raise ValueError(f"SSIM needs images of at least {win.size} x {win.size} pixels, got {hh} x {ww}")
    xs = jnp.moveaxis(x, -1, 1).reshape(b * c, hh, ww).astype(jnp.float32)
    ys = jnp.moveaxis(y, -1, 1).reshape(b * c, hh, ww).astype(jnp.float32)
    mx, my = _blur_valid(xs, win), _blur_valid(ys, win)
    vx = _blur_valid(xs * xs, win) - mx * mx
    vy = _blur_valid(ys * ys, win) - my * my
    cov = _blur_valid(xs * ys, win) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(smap.reshape(b, c, -1), axis=(1, 2))


def image_metrics(prediction: jax.Array, target: jax.Array) -> dict[str, jax.Array]:
    """Batch means of PSNR, SSIM and MAE."""
    return {"psnr": jnp.mean(psnr(prediction, target)), "ssim": jnp.mean(ssim(prediction, target)),
            "mae": jnp.mean(mae(prediction, target))}


def make_validation_fn(make_denoise: Callable, schedule: Any, *, vem: bool, num_samples: int) -> Callable:
    """Returns ``validate(ema_params, batch, key) -> (metrics, mean, std)``, jittable.

    make_denoise: ``params -> denoise(x, gamma, slice_index)`` in eval mode (models.make_denoise_fn
    partially applied). Each image is sampled ``num_samples`` times with the test-schedule DDPM sampler;
    the mean is scored against the target and the per-pixel std (ddof=1) returned for display. For vEM
    every one of the z-1 target slices is generated (one enlarged batch with slice indices).
    """
    from emdiffuse_jax.diffusion.ensemble import ensemble_mean_var
    from emdiffuse_jax.diffusion.samplers import collect_slices, ddpm_sample, expand_slices

    def validate(params, batch, key):
        cond, target = batch["cond"], batch["target"]
        denoise = make_denoise(params)
        slices = target.shape[-1]
        cond, slice_index = expand_slices(cond, slices) if vem else (cond, None)

        def sample(k):
            return ddpm_sample(denoise, cond, k, schedule, slice_index=slice_index)

        mean, var = ensemble_mean_var(sample, key, num_samples, ddof=1 if num_samples > 1 else 0)
        std = jnp.sqrt(var)
        if vem:
            mean, std = collect_slices(mean, slices), collect_slices(std, slices)
        return image_metrics(mean, target), mean, std

    return validate


def summary_panel(cond: np.ndarray, mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One image row [condition channels | mean | std | target] in [0, 1] for TensorBoard.

    cond, mean, std, target: (H, W, C) for one image; vEM shows the first and the middle generated
    slice; std is scaled so that 0..0.5 (in [-1, 1] units) fills the range.
    """
    def cols(x):
        return [x[..., i] for i in sorted({0, x.shape[-1] // 2})]

    tiles = ([(c + 1) / 2 for c in cols(cond)] + [(m + 1) / 2 for m in cols(mean)]
             + [np.clip(s / 0.5, 0, 1) for s in cols(std)] + [(t + 1) / 2 for t in cols(target)])
    return np.clip(np.concatenate(tiles, axis=1), 0.0, 1.0)
