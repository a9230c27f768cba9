"""Degradation models follow their documented formulas."""

import numpy as np
import pytest

from emdiffuse_jax.data import degrade as d


def test_poisson_gaussian_mean_and_variance_follow_the_dose():
    x = np.full((256, 256), 0.2)  # far enough from 0 and 1 that clipping is negligible
    for dose in (5.0, 50.0):
        y = d.poisson_gaussian(x, np.random.default_rng(0), dose=dose, read_sigma=0.01)
        assert abs(y.mean() - 0.2) < 0.01
        assert abs(y.var() - (0.2 / dose + 0.01 ** 2)) < 0.1 * (0.2 / dose)
    assert d.poisson_gaussian(np.ones((8, 8)), np.random.default_rng(0), dose=1e9, read_sigma=0).min() > 0.999
    with pytest.raises(ValueError, match="dose"):
        d.poisson_gaussian(x, np.random.default_rng(0), dose=0)


def test_scan_line_noise_is_constant_offset_per_row_without_jitter():
    x = np.random.default_rng(1).random((64, 48))
    y = d.scan_line_noise(x, np.random.default_rng(2), offset_sigma=0.1, jitter_sigma=0.0)
    diff = y - x
    assert np.allclose(diff, diff[:, :1]) and diff[:, 0].std() > 0.05
    ramp = np.tile(np.arange(48.0), (64, 1))
    jit = d.scan_line_noise(ramp, np.random.default_rng(3), offset_sigma=0, jitter_sigma=0.5)
    shifts = (ramp - jit)[:, 10:-10].mean(1)  # a shift of a linear ramp is a constant per row
    assert shifts.std() > 0.2 and np.allclose((ramp - jit)[:, 10:-10], shifts[:, None])


def test_downsample_is_block_mean_and_upsample_has_half_pixel_centres():
    x = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(d.downsample2(x), [[2.5, 4.5], [10.5, 12.5]])
    row = np.array([[0.0, 4.0]])
    up = d.upsample2_bilinear(np.repeat(row, 2, 0))
    np.testing.assert_allclose(up[0], [0.0, 1.0, 3.0, 4.0])  # weights 3/4, 1/4; clamped edges
    img = np.random.default_rng(4).random((32, 32))
    k = np.array([0.125, 0.75, 0.125])  # down(up(x)) = x filtered by [1/8, 3/4, 1/8] along each axis
    want = sum(k[i] * k[j] * img[i:30 + i, j:30 + j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(d.downsample2(d.upsample2_bilinear(img))[1:-1, 1:-1], want, atol=1e-12)
    assert d.upsample2_bilinear(np.ones((3, 5, 2))).shape == (6, 10, 2)


def test_z_subsample_keeps_every_factor_th_slice_and_averages_thickness():
    vol = np.arange(10.0)[:, None, None] * np.ones((1, 2, 2))
    np.testing.assert_array_equal(d.z_subsample(vol, 3)[:, 0, 0], [0, 3, 6, 9])
    np.testing.assert_allclose(d.z_subsample(vol, 3, thickness=3)[:, 0, 0], [(1 + 0 + 1) / 3, 3, 6, (8 + 9 + 8) / 3])


def test_blur_and_unit_conversion():
    x = np.zeros((21, 21))
    x[10, 10] = 1
    b = d.blur(x, 2.0)
    assert abs(b.sum() - 1) < 1e-6 and b[10, 10] < 0.1
    u16 = np.array([[0, 65535]], np.uint16)
    assert np.array_equal(d.from_unit(d.to_unit(u16), np.uint16), u16)


def test_degrade_spec_parsing_and_errors():
    f = d.parse_degradation("blur:sigma=1+poisson:dose=10,read_sigma=0+scanline:offset_sigma=0.01", "denoise")
    y = f(np.full((32, 32), 0.5), np.random.default_rng(0))
    assert y.shape == (32, 32) and y.std() > 0
    sr = d.parse_degradation(None, "superres")
    assert sr(np.full((32, 32), 0.5), np.random.default_rng(0)).shape == (16, 16)
    with pytest.raises(ValueError, match="unknown step 'gamma'"):
        d.parse_degradation("gamma:x=1", "denoise")
    with pytest.raises(ValueError, match="down2"):
        d.parse_degradation("poisson:dose=5", "superres")
