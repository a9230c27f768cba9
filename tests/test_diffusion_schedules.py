"""Noise schedules: the reference's buffers and the closed forms of every kind."""

import numpy as np
import pytest

from conftest import shared_path
from emdiffuse_jax.diffusion.schedules import (KINDS, TEST_SCHEDULE, TRAIN_SCHEDULE, make_betas,
                                               make_schedule)

BUFFERS = ("gammas", "sqrt_recip_gammas", "sqrt_recipm1_gammas", "posterior_log_variance_clipped",
           "posterior_mean_coef1", "posterior_mean_coef2")


@pytest.mark.parametrize("name,kwargs", [("train", TRAIN_SCHEDULE), ("test", TEST_SCHEDULE)])
def test_schedules_match_the_reference_buffers(name, kwargs):
    golden = np.load(shared_path("golden", f"schedule_{name}.npz"))
    schedule = make_schedule(**kwargs)
    for buffer in BUFFERS:
        ours, ref = np.asarray(getattr(schedule, buffer)), golden[buffer]
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0, err_msg=buffer)


def test_train_and_test_schedule_endpoints():
    train, test = make_schedule(**TRAIN_SCHEDULE), make_schedule(**TEST_SCHEDULE)
    assert float(train.gammas[0]) == pytest.approx(0.999999)
    assert float(train.gammas[-1]) == pytest.approx(4.39e-5, rel=0.01)
    assert float(test.gammas[0]) == pytest.approx(0.9999)
    assert float(make_schedule(**dict(TEST_SCHEDULE, n_timestep=200)).gammas[-1]) == pytest.approx(9.2e-5, rel=0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_valid_betas_and_decreasing_gammas(kind):
    betas = make_betas(kind, 100, 1e-4, 0.02)
    assert betas.shape == (100,) and betas.dtype == np.float64
    assert np.all(betas > 0) and np.all(betas <= 1)
    gammas = np.asarray(make_schedule(kind, 100, 1e-4, 0.02).gammas)
    assert np.all(np.diff(gammas) <= 0)


def test_closed_forms():
    np.testing.assert_allclose(make_betas("quad", 3, 1e-4, 1e-2), [1e-4, (0.01 + 0.1) ** 2 / 4, 1e-2])
    np.testing.assert_allclose(make_betas("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1])
    warm = make_betas("warmup10", 100, 1e-4, 0.02)
    assert warm[9] == pytest.approx(0.02) and warm[0] == pytest.approx(1e-4) and np.all(warm[10:] == 0.02)
    np.testing.assert_allclose(make_betas("const", 5, 1e-4, 0.3), 0.3)
    cosine = make_betas("cosine", 1000)  # starts tiny, capped at 0.999
    assert cosine.max() <= 0.999 and cosine[0] < 1e-3


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        make_betas("sigmoid", 10)
