"""Normalisation modes map to [-1, 1] and denormalise back to the input's range and dtype."""

import numpy as np
import pytest

from emdiffuse_jax.data.normalize import NormParams, denormalize, fit_normalization, normalize


def test_uint8_mode_is_the_reference_mapping_and_round_trips():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    y, p = normalize(x, "uint8")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x / 127.5 - 1, atol=1e-7)
    assert np.array_equal(denormalize(y, p), x) and denormalize(y, p).dtype == np.uint8


def test_uint8_mode_refuses_16_bit_input():
    with pytest.raises(ValueError, match="8-bit"):
        normalize(np.zeros((4, 4), np.uint16), "uint8")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_minmax_round_trip_is_exact_for_integer_data(dtype):
    hi = np.iinfo(dtype).max
    x = np.random.default_rng(0).integers(3, hi - 5, (64, 64)).astype(dtype)
    y, p = normalize(x, "minmax")
    assert y.min() == -1 and y.max() == 1
    back = denormalize(y, p)
    assert back.dtype == dtype and np.array_equal(back, x)


def test_float_data_round_trips_to_float32_precision():
    x = np.random.default_rng(1).normal(1000.0, 30.0, (32, 32)).astype(np.float32)
    y, p = normalize(x, "minmax")
    np.testing.assert_allclose(denormalize(y, p), x, rtol=1e-6)


def test_percentile_clips_outliers_and_round_trips_inside_its_range():
    rng = np.random.default_rng(2)
    x = rng.integers(1000, 3000, (100, 100)).astype(np.uint16)
    x[0, 0], x[0, 1] = 0, 65535
    y, p = normalize(x, "percentile", low=0.1, high=99.9)
    assert y.min() == -1 and y.max() == 1 and p.clip
    assert 1000 <= p.lo < p.hi <= 3000
    inside = (x >= p.lo) & (x <= p.hi)
    assert np.array_equal(denormalize(y, p)[inside], x[inside])
    y2, p2 = normalize(x, "percentile", clip=False)
    assert y2.max() > 1 and np.array_equal(denormalize(y2, p2), x)


def test_params_serialise_and_constant_images_do_not_divide_by_zero():
    p = fit_normalization(np.full((4, 4), 7, np.uint16), "minmax")
    assert p.hi == p.lo + 1
    assert NormParams.from_dict(p.to_dict()) == p
    y, _ = normalize(np.full((4, 4), 7, np.uint16), "minmax")
    assert np.all(y == -1)


def test_lazy_volumes_are_fitted_on_a_subset():
    vol = np.random.default_rng(3).integers(0, 4000, (40, 64, 64)).astype(np.uint16)
    full = fit_normalization(vol, "percentile", low=1, high=99)
    sub = fit_normalization(vol, "percentile", low=1, high=99, max_values=20000)
    assert abs(sub.lo - full.lo) < 80 and abs(sub.hi - full.hi) < 80


def test_unknown_mode_and_nan_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        normalize(np.zeros((2, 2), np.uint8), "zscore")
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.array([[0.0, np.nan]], np.float32), "minmax")
