"""Does the uncertainty point at the errors? Block scores against block errors.

Each image (or generated slice) is cut into non-overlapping block x block squares (incomplete border
squares dropped). Per block: the score is the mean of the per-pixel std (the uncertainty score U of
`uncertainty.py`, in the std's units) and the error the mean absolute error of the prediction (in
[0, 1] units of the data range). Two numbers summarise how useful the score is:

* Spearman's rank correlation of score and error over all blocks (1: the score orders blocks exactly
  by error; 0: unrelated).
* ROC AUC for flagging the worst blocks: the blocks whose error is in the top `worst_fraction`
  (default 10 %) are the positives; AUC is the probability that a random positive scores higher than a
  random negative (ties count half). 1 is a perfect flag, 0.5 chance, below 0.5 worse than chance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

WORST_FRACTION = 0.1


def to_blocks(x, block: int) -> np.ndarray:
    """(N, H, W) or (H, W) -> (num_blocks, block, block) non-overlapping squares, border remainders dropped."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n, h, w = x.shape
    hb, wb = h // block, w // block
    if hb == 0 or wb == 0:
        raise ValueError(f"images of {h} x {w} pixels are smaller than one {block} x {block} block; use a "
                         "smaller block")
    x = x[:, :hb * block, :wb * block].reshape(n, hb, block, wb, block).swapaxes(2, 3)
    return x.reshape(-1, block, block)


def block_scores_errors(prediction, truth, std, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: mean std (score) and mean absolute error of prediction vs truth (same units as given)."""
    shapes = {np.shape(prediction), np.shape(truth), np.shape(std)}
    if len(shapes) != 1:
        raise ValueError(f"prediction, truth and std must share one shape, got {sorted(shapes)}")
    err = to_blocks(np.abs(np.asarray(prediction, np.float64) - np.asarray(truth, np.float64)), block)
    score = to_blocks(np.asarray(std, np.float64), block)
    return score.mean(axis=(1, 2)), err.mean(axis=(1, 2))


def roc_auc(scores, positives) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U)."""
    scores, positives = np.asarray(scores, np.float64).ravel(), np.asarray(positives, bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"{scores.size} scores but {positives.size} labels")
    npos, nneg = int(positives.sum()), int((~positives).sum())
    if npos == 0 or nneg == 0:
        raise ValueError(f"the AUC needs positives and negatives, got {npos} and {nneg}")
    ranks = stats.rankdata(scores)
    return float((ranks[positives].sum() - npos * (npos + 1) / 2) / (npos * nneg))


@dataclasses.dataclass(frozen=True)
class ScoreErrorStats:
    """How well block scores rank block errors."""
    num_blocks: int
    block: int
    spearman: float
    auc_worst: float            # ROC AUC of the score for the blocks with the worst `worst_fraction` errors
    worst_fraction: float
    num_worst: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def score_error_stats(scores, errors, block: int, worst_fraction: float = WORST_FRACTION) -> ScoreErrorStats:
    """Spearman(score, error) and the AUC of the score for the worst `worst_fraction` of blocks by error."""
    scores, errors = np.asarray(scores, np.float64).ravel(), np.asarray(errors, np.float64).ravel()
    if scores.shape != errors.shape:
        raise ValueError(f"{scores.size} scores but {errors.size} errors")
    if not 0 < worst_fraction < 1:
        raise ValueError(f"worst_fraction must lie in (0, 1), got {worst_fraction}")
    n = scores.size
    num_worst = int(round(worst_fraction * n))
    if num_worst < 1 or num_worst >= n:
        raise ValueError(f"{n} blocks are too few to flag the worst {worst_fraction:.0%}; use smaller blocks or "
                         "more images")
    worst = np.zeros(n, bool)
    worst[np.argsort(errors, kind="stable")[n - num_worst:]] = True
    rho = stats.spearmanr(scores, errors).statistic if np.ptp(scores) > 0 and np.ptp(errors) > 0 else 0.0
    return ScoreErrorStats(num_blocks=n, block=int(block), spearman=float(rho), auc_worst=roc_auc(scores, worst),
                           worst_fraction=float(worst_fraction), num_worst=num_worst)
