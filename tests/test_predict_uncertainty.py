"""Uncertainty score, reliability map and calibration on synthetic cases with known answers."""

import numpy as np
import pytest
from scipy import stats

from emdiffuse_jax import uncertainty as unc


def test_pixel_std_is_unbiased_and_in_unit_range():
    samples = np.stack([-np.ones((4, 4)), np.ones((4, 4))])
    # Values -1 and 1 in model units are 0 and 1 in [0, 1] units: unbiased std sqrt(0.5).
    np.testing.assert_allclose(unc.pixel_std(samples), np.sqrt(0.5))


def test_pixel_std_rejects_a_single_sample():
    with pytest.raises(ValueError, match="K >= 2"):
        unc.pixel_std(np.zeros((1, 4, 4)))


def test_tile_scores_average_each_block_including_partial_border_blocks():
    std = np.zeros((5, 7))
    std[:4, :4] = 0.2
    std[4:, :] = 0.5
    scores = unc.tile_scores(std, 4)
    np.testing.assert_allclose(scores, [[0.2, 0.0], [0.5, 0.5]])


def test_assess_flags_only_scores_above_threshold():
    low = unc.assess(np.full((32, 32), 0.05), threshold=0.12, tile=16, window=8)
    high = unc.assess(np.full((32, 32), 0.2), threshold=0.12, tile=16, window=8)
    assert low.reliable and low.reliable_map.all()
    assert not high.reliable and not high.reliable_map.any()
    assert high.summary()["unreliable_fraction"] == 1.0


def test_reliability_map_localises_an_uncertain_region():
    std = np.full((64, 64), 0.02)
    std[:, 40:] = 0.3
    local, ok = unc.reliability_map(std, window=8, threshold=0.12)
    assert ok[:, :30].all() and not ok[:, 46:].any()
    assert local.shape == std.shape


def test_image_score_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        unc.image_score(np.array([[0.1, np.nan]]))


def test_hb_upper_bound_covers_the_true_risk_with_probability_one_minus_delta():
    rng = np.random.default_rng(0)
    p, n, delta = 0.2, 100, 0.1
    misses = sum(unc.hb_upper_bound(rng.binomial(n, p) / n, n, delta) < p for _ in range(300))
    assert misses / 300 <= delta
    # And the bound tightens with more data.
    assert unc.hb_upper_bound(0.2, 10_000, delta) < unc.hb_upper_bound(0.2, 100, delta) < 0.5


def test_rcps_scale_controls_the_miss_rate_for_gaussian_errors():
    rng = np.random.default_rng(1)
    n, shape = 400, (8, 8)
    mean = rng.uniform(0.3, 0.7, (n,) + shape)
    std = rng.uniform(0.01, 0.05, (n,) + shape)
    target = mean + std * rng.standard_normal(mean.shape)
    result = unc.rcps_calibrate(mean, std, target, alpha=0.1, delta=0.1)
    # The oracle scale for a 10 % two-sided miss rate is 1.645; RCPS must not go below it by much
    # and must not be wildly conservative with 400 images.
    assert stats.norm.ppf(0.95) - 0.05 < result.lam < 2.3
    assert result.upper_bound <= 0.1
    fresh = mean + std * rng.standard_normal(mean.shape)
    assert unc.interval_miss_rates(mean, std, fresh, result.lam).mean() <= 0.1


def test_rcps_reports_when_risk_cannot_be_controlled():
    mean = np.zeros((3, 4, 4))
    with pytest.raises(ValueError, match="controls the miss risk"):
        unc.rcps_calibrate(mean + 0.5, mean + 1e-6, mean, alpha=0.05, delta=0.1, lambdas=[1.0, 2.0])


def test_calibrate_threshold_recovers_the_separating_score():
    rng = np.random.default_rng(2)
    scores = rng.uniform(0, 0.3, 500)
    errors = scores * 0.5 + rng.normal(0, 0.002, 500)  # error tolerance 0.05 <-> score 0.1
    result = unc.calibrate_threshold(scores, errors, tolerance=0.05)
    assert abs(result.threshold - 0.1) < 0.01
    assert result.auc > 0.98 and result.true_positive_rate > 0.95 and result.false_positive_rate < 0.05


def test_calibrate_threshold_needs_both_classes():
    with pytest.raises(ValueError, match="tolerance"):
        unc.calibrate_threshold([0.1, 0.2], [0.01, 0.02], tolerance=0.5)


def _hb_bound_by_bisection(risk, n, delta, rounding=np.ceil):
    """An independent Hoeffding-Bentkus bound: bisection on the p-value min(Hoeffding, Bentkus) = delta,
    Bentkus with P(Binomial(n, mu) <= ceil(n risk)) as in Bates et al. (2021)."""
    def p_value(mu):
        a = min(risk, mu)
        kl = (a * np.log(a / mu) if a > 0 else 0.0) + (1 - a) * np.log((1 - a) / (1 - mu))
        return min(np.exp(-n * kl), np.e * stats.binom.cdf(rounding(n * risk), n, mu))

    lo, hi = risk, 1 - 1e-10
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("risk, n", [(0.113, 50), (0.0371, 200), (0.25, 30), (0.35, 10)])
def test_hb_upper_bound_matches_an_independent_implementation_with_fractional_n_risk(risk, n):
    ours = unc.hb_upper_bound(risk, n, 0.1)
    np.testing.assert_allclose(ours, _hb_bound_by_bisection(risk, n, 0.1), atol=1e-7)
    assert ours > _hb_bound_by_bisection(risk, n, 0.1, np.floor) + 1e-4  # rounding down was optimistic
