"""Pixel metrics of images in the model's [-1, 1] range (or any range via data_range): PSNR, SSIM, MAE.

Batched and jittable (NHWC, one value per image; channels averaged), used by training validation and by
the file-level comparison (`evaluation.compare`), which passes its own data range.
"""

from __future__ import annotations

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
