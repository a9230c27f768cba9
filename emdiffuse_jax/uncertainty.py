"""Self-assessment of diffusion predictions: uncertainty score, reliability map and calibration.

Our definitions (the reference computes a per-pixel std but no score; the paper's 0.12 threshold is
reproduced as a default, not its unpublished formula):

* Intensities are expressed in [0, 1] units: an image in the model's [-1, 1] range maps with (x + 1) / 2, so
  a std of s in [-1, 1] units is s / 2 here.
* Per-pixel std: the unbiased (ddof=1) standard deviation over K >= 2 samples, in [0, 1] units.
* Uncertainty score U of an image (or tile): the mean of the per-pixel std over its pixels. Unit: fraction of
  the full intensity range (U = 0.12 means samples disagree by 12 % of the range, e.g. about 31 grey levels
  of an 8-bit image, on average).
* Reliability: a prediction is flagged unreliable when U > threshold (default 0.12). The reliability map is
  the local score (per-pixel std box-averaged over a window), with pixels above the threshold unreliable.

Calibration (all pure NumPy / SciPy, no model needed):
* `rcps_calibrate`: risk-controlling prediction sets (Bates et al. 2021; Angelopoulos et al. 2022) for pixel
  intervals [mean - lam * std, mean + lam * std]: the smallest lam whose Hoeffding-Bentkus upper confidence
  bound on the miss rate stays <= alpha with probability 1 - delta.
* `calibrate_threshold`: the score threshold that best separates held-out predictions whose error exceeds
  a tolerance from those that do not (Youden's J on the ROC curve).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage, optimize, special, stats

DEFAULT_THRESHOLD = 0.12


def to_unit_range(x):
    """Maps model intensities in [-1, 1] to [0, 1]."""
    return (np.asarray(x, np.float64) + 1.0) / 2.0


def pixel_std(samples, axis: int = 0) -> np.ndarray:
    """Unbiased per-pixel std over the sample axis of [-1, 1] samples, returned in [0, 1] units."""
    samples = np.asarray(samples, np.float64)
    if samples.shape[axis] < 2:
        raise ValueError(f"the uncertainty needs K >= 2 samples, got K={samples.shape[axis]}")
    return samples.std(axis=axis, ddof=1) / 2.0


def image_score(std_unit) -> float:
    """Uncertainty score U: mean of the per-pixel std (in [0, 1] units) over all pixels of the image."""
    std_unit = np.asarray(std_unit, np.float64)
    if std_unit.size == 0 or not np.all(np.isfinite(std_unit)):
        raise ValueError("the std map is empty or holds NaN/inf values")
    return float(std_unit.mean())


def tile_scores(std_unit, tile: int) -> np.ndarray:
    """Score U of every tile of a (H, W) std map on a non-overlapping grid of tile x tile blocks.

    Border blocks may be smaller than `tile`; each is averaged over its own pixels. Returns (rows, cols).
    """
    std_unit = np.asarray(std_unit, np.float64)
    if std_unit.ndim != 2 or tile < 1:
        raise ValueError(f"expected a (H, W) std map and tile >= 1, got shape {std_unit.shape}, tile {tile}")
    h, w = std_unit.shape
    rows, cols = -(-h // tile), -(-w // tile)
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = std_unit[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile].mean()
    return out


def reliability_map(std_unit, window: int = 64, threshold: float = DEFAULT_THRESHOLD):
    """Local score (box mean of the std over window x window pixels) and the boolean map local <= threshold."""
    std_unit = np.asarray(std_unit, np.float64)
    local = ndimage.uniform_filter(std_unit, size=min(window, *std_unit.shape), mode="reflect")
    return local, local <= threshold


@dataclasses.dataclass(frozen=True)
class Assessment:
    """Score, flag and maps of one prediction (all intensities in [0, 1] units)."""
    score: float
    reliable: bool
    threshold: float
    tile: int
    tile_scores: np.ndarray
    local_score: np.ndarray
    reliable_map: np.ndarray

    def summary(self) -> dict:
        """JSON-ready summary (the maps themselves are saved as images)."""
        return {"score": self.score, "reliable": self.reliable, "threshold": self.threshold,
                "tile": self.tile, "tile_scores": np.round(self.tile_scores, 6).tolist(),
                "unreliable_fraction": float(1.0 - self.reliable_map.mean())}


def assess(std_unit, threshold: float = DEFAULT_THRESHOLD, tile: int = 256, window: int = 64) -> Assessment:
    """Score, per-tile scores, reliability map and flag of a (H, W) std map in [0, 1] units."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    score = image_score(std_unit)
    local, ok = reliability_map(std_unit, window, threshold)
    return Assessment(score=score, reliable=score <= threshold, threshold=float(threshold), tile=int(tile),
                      tile_scores=tile_scores(std_unit, tile), local_score=local, reliable_map=ok)


# ------------------------------------------------------------------------------------------------------
# Risk-controlling calibration of pixel intervals.


def _h1(y, mu):
    """Kullback-Leibler divergence between Bernoulli(y) and Bernoulli(mu)."""
    return special.xlogy(y, y / mu) + special.xlogy(1 - y, (1 - y) / (1 - mu))


def hb_upper_bound(risk: float, n: int, delta: float) -> float:
    """Hoeffding-Bentkus (1 - delta) upper confidence bound on a mean loss in [0, 1] from its empirical value.

    The bound is the smallest mu >= risk for which the better of the Hoeffding tail exp(-n KL(min(risk, mu) || mu))
    and the Bentkus tail e * P(Binomial(n, mu) <= ceil(n * risk)) falls to delta; 1 when no such mu exists.
    The ceiling matters when n * risk is fractional (losses are fractions of pixels, not 0/1): rounding down
    would make the tail smaller and the bound optimistic (Bates et al. 2021, "Distribution-free,
    risk-controlling prediction sets", Hoeffding-Bentkus bound).
    """
    if not (0 <= risk <= 1 and n >= 1 and 0 < delta < 1):
        raise ValueError(f"need risk in [0,1], n >= 1, delta in (0,1); got {risk}, {n}, {delta}")

    successes = np.ceil(n * risk - 1e-9)  # (tolerance: risk = k / n computed in floating point stays k)

    def log_tail(mu):
        hoeffding = -n * _h1(min(risk, mu), mu)
        bentkus = np.log(max(stats.binom.cdf(successes, n, mu), 1e-300)) + 1.0
        return min(hoeffding, bentkus) - np.log(delta)

    top = 1 - 1e-10
    if log_tail(top) > 0:
        return 1.0
    # At mu = risk the Hoeffding tail is 1 and the Bentkus tail about e/2, both above delta: root in (risk, top].
    return float(optimize.brentq(log_tail, max(risk, 1e-12), top, xtol=1e-12, maxiter=1000))


def interval_miss_rates(mean, std, target, lam: float) -> np.ndarray:
    """Per-image fraction of pixels whose target lies outside [mean - lam std, mean + lam std] (clipped to [0,1])."""
    lower = np.clip(mean - lam * std, 0.0, 1.0)
    upper = np.clip(mean + lam * std, 0.0, 1.0)
    miss = (target < lower) | (target > upper)
    return miss.reshape(miss.shape[0], -1).mean(axis=1)


@dataclasses.dataclass(frozen=True)
class RcpsResult:
    """Calibrated interval scale and the curves it was chosen from."""
    lam: float
    risk: float
    upper_bound: float
    alpha: float
    delta: float
    n: int
    lambdas: np.ndarray
    risks: np.ndarray
    upper_bounds: np.ndarray


def rcps_calibrate(mean, std, target, alpha: float = 0.1, delta: float = 0.1, lambdas=None,
                   per_pixel: bool = False) -> RcpsResult:
    """Risk-controlling scale lam for intervals mean +- lam * std on held-out images (all in [0, 1] units).

    mean, std, target: (N, H, W) (or (N, ...)) arrays. The loss of an image is the fraction of its pixels
    outside the interval; the miss risk is their mean. Scanning lam from the largest value down, lam is
    lowered while the Hoeffding-Bentkus bound on the risk stays <= alpha; the result guarantees (with
    probability 1 - delta over the calibration images) that the expected miss fraction on new images from
    the same distribution is <= alpha. n is the number of images (per_pixel=False, statistically valid) or
    the number of pixels (per_pixel=True, the reference's optimistic choice treating pixels as independent).
    Raises ValueError when even the largest lam cannot control the risk.
    """
    mean, std, target = (np.asarray(a, np.float64) for a in (mean, std, target))
    if not (mean.shape == std.shape == target.shape) or mean.ndim < 2:
        raise ValueError(f"mean, std and target must share one (N, ...) shape; got {mean.shape}, {std.shape}, "
                         f"{target.shape}")
    if not (0 < alpha < 1 and 0 < delta < 1):
        raise ValueError(f"alpha and delta must lie in (0, 1); got {alpha}, {delta}")
    lambdas = np.sort(np.linspace(0.0, 10.0, 501) if lambdas is None else np.asarray(lambdas, np.float64))
    n = int(mean.size if per_pixel else mean.shape[0])
    risks = np.array([interval_miss_rates(mean, std, target, lam).mean() for lam in lambdas])
    bounds = np.full_like(risks, np.nan)
    chosen = None
    for i in range(len(lambdas) - 1, -1, -1):
        bounds[i] = hb_upper_bound(risks[i], n, delta)
        if bounds[i] > alpha:
            break
        chosen = i
    if chosen is None:
        raise ValueError(f"no interval scale up to {lambdas[-1]} controls the miss risk at alpha={alpha} with "
                         f"{n} calibration units: use more calibration images, a larger alpha or larger lambdas")
    return RcpsResult(lam=float(lambdas[chosen]), risk=float(risks[chosen]), upper_bound=float(bounds[chosen]),
                      alpha=alpha, delta=delta, n=n, lambdas=lambdas, risks=risks, upper_bounds=bounds)


# ------------------------------------------------------------------------------------------------------
# Score threshold from held-out pairs.


@dataclasses.dataclass(frozen=True)
class ThresholdResult:
    """Threshold on the score that flags predictions with error above the tolerance."""
    threshold: float
    tolerance: float
    true_positive_rate: float
    false_positive_rate: float
    auc: float
    num_bad: int
    num_good: int


def calibrate_threshold(scores, errors, tolerance: float) -> ThresholdResult:
    """Score threshold separating predictions with error > tolerance ("bad") from the rest.

    A prediction is flagged when score > threshold. The threshold maximises Youden's J = TPR - FPR (bad
    predictions flagged minus good predictions flagged); candidates are midpoints between sorted scores.
    Ties go to the larger threshold. auc is the probability that a random bad prediction scores higher than
    a random good one (ties count half). Needs at least one bad and one good prediction.
    """
    scores, errors = np.asarray(scores, np.float64).ravel(), np.asarray(errors, np.float64).ravel()
    if scores.shape != errors.shape or not (np.all(np.isfinite(scores)) and np.all(np.isfinite(errors))):
        raise ValueError("scores and errors must be finite and of equal length")
    bad = errors > tolerance
    if bad.all() or not bad.any():
        raise ValueError(f"all {len(bad)} held-out predictions are {'bad' if bad.all() else 'good'} at tolerance "
                         f"{tolerance}: choose a tolerance between min error {errors.min():.4g} and max "
                         f"{errors.max():.4g}")
    uniq = np.unique(scores)
    candidates = np.concatenate([[uniq[0] - 1e-9], (uniq[:-1] + uniq[1:]) / 2, [uniq[-1] + 1e-9]])
    flagged = scores[None, :] > candidates[:, None]
    tpr = flagged[:, bad].mean(axis=1)
    fpr = flagged[:, ~bad].mean(axis=1)
    youden = tpr - fpr
    best = int(np.flatnonzero(youden == youden.max())[-1])
    auc = stats.mannwhitneyu(scores[bad], scores[~bad]).statistic / (bad.sum() * (~bad).sum())
    return ThresholdResult(threshold=float(candidates[best]), tolerance=float(tolerance),
                           true_positive_rate=float(tpr[best]), false_positive_rate=float(fpr[best]),
                           auc=float(auc), num_bad=int(bad.sum()), num_good=int((~bad).sum()))
