"""Pair registration on synthetic known warps: residual <= 0.5 px RMS, and clear rejections."""

import numpy as np
import pytest
from conftest import shared_path
from scipy import ndimage

from emdiffuse_jax.data import io

from emdiffuse_jax.data.degrade import downsample2, poisson_gaussian
from emdiffuse_jax.data.phantom import phantom
from emdiffuse_jax.data.register import register_pair, register_superres


def _known_warp(fixed, rng, angle=1.5, scale=1.02, shift=(5.3, -3.7), amp=1.5, persp=0.0):
    """moving(q) = fixed(G(q)) with G = rotation/scale/shift (+ perspective) + smooth displacement."""
    h, w = fixed.shape
    yy, xx = np.mgrid[:h, :w].astype(float)
    th = np.deg2rad(angle)
    a = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    field = [ndimage.gaussian_filter(rng.standard_normal((h, w)), 20) for _ in range(2)]
    ey, ex = (amp * f / f.std() for f in field)
    cy, cx = yy - h / 2, xx - w / 2
    d = 1 + persp * cx
    gy = (a[0, 0] * cy + a[0, 1] * cx) / d + h / 2 + shift[0] + ey
    gx = (a[1, 0] * cy + a[1, 1] * cx) / d + w / 2 + shift[1] + ex
    return ndimage.map_coordinates(fixed, [gy, gx], order=3, mode="reflect"), np.stack([gy, gx])


def _true_rms(coords, g, margin=24):
    """RMS of G(coords(p)) - p: how far the estimated map is from inverting the known warp."""
    h, w = coords.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    back = [ndimage.map_coordinates(gi, coords, order=1) for gi in g]
    err = np.hypot(back[0] - yy, back[1] - xx)[margin:-margin, margin:-margin]
    return float(np.sqrt((err ** 2).mean()))


@pytest.mark.parametrize("model,persp", [("affine", 0.0), ("homography", 2e-4)])
def test_noisy_pair_with_global_and_nonrigid_warp_registers_below_half_a_pixel(model, persp):
    rng = np.random.default_rng(0)
    clean = phantom((256, 256), seed=5).astype(np.float64) / 255
    moving, g = _known_warp(clean, rng, persp=persp)
    noisy = poisson_gaussian(moving, rng, dose=100)
    reg = register_pair(noisy, clean, model=model)
    assert reg.ok, reg.reason
    assert _true_rms(reg.coords, g) <= 0.5
    assert reg.residual_px <= 0.5 and reg.ncc > 0.8
    assert np.abs(np.array(reg.shift) - (4.7, -4.2)).max() < 2.5  # near the true centre displacement


def test_real_sstem_crop_with_known_warp_and_noise_registers_below_half_a_pixel():
    crop = io.read_volume(shared_path("data", "sstem-vnc-30.tif"), lazy=True)[10, 100:356, 100:356]
    clean = crop.astype(np.float64) / 255
    rng = np.random.default_rng(2)
    moving, g = _known_warp(clean, rng, angle=-1.0, scale=0.985, shift=(-4.2, 6.1))
    reg = register_pair(poisson_gaussian(moving, rng, dose=30), clean)
    assert reg.ok, reg.reason
    assert _true_rms(reg.coords, g) <= 0.5 and reg.residual_px <= 0.5


def test_superres_pair_registers_on_the_half_resolution_grid():
    rng = np.random.default_rng(1)
    high = phantom((384, 384), seed=6).astype(np.float64) / 255
    warped, g = _known_warp(high, rng, angle=-1.0, scale=0.99, shift=(3.0, 2.0), amp=1.0)
    low = downsample2(warped)
    reg = register_superres(low, high)
    assert reg.ok, reg.reason
    assert reg.aligned.shape == (192, 192) and reg.residual_px <= 0.5


def test_unrelated_images_are_rejected_with_a_reason():
    a = phantom((192, 192), seed=1).astype(np.float64)
    b = phantom((192, 192), seed=2).astype(np.float64)
    reg = register_pair(a, b)
    assert not reg.ok and ("global" in reg.reason or "NCC" in reg.reason or "residual" in reg.reason)


def test_shift_limit_and_shape_mismatch_are_reported():
    img = phantom((128, 128), seed=3).astype(np.float64)
    moved = ndimage.shift(img, (20, 0), mode="reflect")
    reg = register_pair(moved, img, max_shift=5, nonrigid=False)
    assert not reg.ok and "max_shift" in reg.reason
    with pytest.raises(ValueError, match="one shape"):
        register_pair(img, img[:100])
