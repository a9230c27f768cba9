"""Calibrates the uncertainty of a model on held-out pairs.

  emdiffuse calibrate --predictions=PRED_DIR --target=GT_IMAGE_STACK_OR_FOLDER --output=DIR
      [--tolerance=0.05] [--alpha=0.1] [--delta=0.1] [--unit=auto|image|block] [--block=64]

PRED_DIR: what `emdiffuse predict` (K >= 2) wrote for the held-out inputs. From a checkout:
python launch/calibrate.py with the same flags.

(a) Risk-controlling pixel intervals: the scale lam such that [mean - lam std, mean + lam std] misses at most
    a fraction alpha of the pixels, with probability 1 - delta (Hoeffding-Bentkus bound over the units).
(b) The uncertainty-score threshold that best separates units whose mean absolute error (in [0, 1] units)
    exceeds --tolerance from the others (Youden's J), with its ROC AUC.
Units are whole images (default with >= 20 images of one shape) or blocks; the bound assumes independent
units, which blocks of the same images are not (see docs/prediction.md).
Writes calibration.json and calibration.png (score vs error with the threshold; interval risk vs lam).
"""

import json
import sys

import numpy as np
from absl import app, flags

from emdiffuse_jax import cli

_PREDICTIONS = flags.DEFINE_string("predictions", None, "Output folder of `emdiffuse predict` (K >= 2).")
_TARGET = flags.DEFINE_string("target", None, "Ground truth matching the predicted images (same names/shapes).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for calibration.json and calibration.png.")
_TOLERANCE = flags.DEFINE_float("tolerance", 0.05, "Error tolerance: unit (image or block) MAE in [0, 1] units.")
_ALPHA = flags.DEFINE_float("alpha", 0.1, "Tolerated fraction of pixels outside their interval.")
_DELTA = flags.DEFINE_float("delta", 0.1, "Allowed probability that the interval guarantee fails.")
_UNIT = flags.DEFINE_enum("unit", "auto", ["auto", "image", "block"],
                          "Calibration unit: whole images, blocks, or auto (images when >= 20, else blocks).")
_BLOCK = flags.DEFINE_integer("block", 64, "Block size in pixels when the units are blocks.")
flags.mark_flags_as_required(["predictions", "target", "output"])


def _panel(draw, box, xs_list, ys_list, colors, xlim, ylim, vlines, hlines, title, xlabel):
    """One scatter/line panel drawn with PIL: box = (left, top, right, bottom) of the plot area."""
    left, top, right, bottom = box
    sx = lambda x: left + (x - xlim[0]) / (xlim[1] - xlim[0]) * (right - left)  # noqa: E731
    sy = lambda y: bottom - (y - ylim[0]) / (ylim[1] - ylim[0]) * (bottom - top)  # noqa: E731
    draw.rectangle(box, outline="black")
    for frac in (0.0, 0.5, 1.0):
        x, y = xlim[0] + frac * (xlim[1] - xlim[0]), ylim[0] + frac * (ylim[1] - ylim[0])
        draw.text((sx(x) - 12, bottom + 4), f"{x:.3g}", fill="black")
        draw.text((left - 40, sy(y) - 5), f"{y:.3g}", fill="black")
    for value, color in vlines:
        draw.line([(sx(value), top), (sx(value), bottom)], fill=color, width=2)
    for value, color in hlines:
        draw.line([(left, sy(value)), (right, sy(value))], fill=color, width=2)
    for xs, ys, (color, kind) in zip(xs_list, ys_list, colors):
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
        if kind == "dots":
            for x, y in pts:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        elif len(pts) > 1:
            draw.line(pts, fill=color, width=2)
    draw.text((left, top - 30), title, fill="black")
    draw.text((left + 60, bottom + 18), xlabel, fill="black")


def plot(path, scores, errors, thr, rcps):
    """calibration.png: block score vs error (tolerance dashed grey, threshold red) and the interval risk
    (blue) with its upper bound (orange) against lambda (alpha grey, chosen lambda red)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1000, 420), "white")
    draw = ImageDraw.Draw(image)
    pad = lambda lo, hi: (lo - 0.05 * (hi - lo + 1e-12), hi + 0.05 * (hi - lo + 1e-12))  # noqa: E731
    _panel(draw, (60, 50, 470, 370), [scores], [errors], [("steelblue", "dots")],
           pad(min(scores.min(), thr.threshold), max(scores.max(), thr.threshold)),
           pad(min(errors.min(), thr.tolerance), max(errors.max(), thr.tolerance)),
           [(thr.threshold, "red")], [(thr.tolerance, "grey")],
           f"block MAE vs uncertainty score; threshold {thr.threshold:.4f}, AUC {thr.auc:.3f}",
           "score (mean std, [0,1] units); y: MAE ([0,1] units)")
    _panel(draw, (570, 50, 980, 370), [rcps.lambdas, rcps.lambdas], [rcps.risks, rcps.upper_bounds],
           [("steelblue", "line"), ("darkorange", "line")], (rcps.lambdas[0], rcps.lambdas[-1]), (0.0, 1.0),
           [(rcps.lam, "red")], [(rcps.alpha, "grey")],
           f"pixels outside mean +- lambda std; lambda {rcps.lam:.3f} (alpha {rcps.alpha:g}, delta {rcps.delta:g})",
           "lambda; blue: miss rate, orange: HB upper bound")
    tmp = path.with_name(".calibration.tmp.png")
    image.save(tmp, format="PNG")
    tmp.replace(path)


OUTPUTS = ("calibration.json", "calibration.png")


def check_flags() -> None:
    """Every flag in range before anything is read (ValueError naming the flag)."""
    if _BLOCK.value < 2:
        raise ValueError(f"--block must be >= 2 pixels (the side of a calibration square), got {_BLOCK.value}")
    for flag in (_ALPHA, _DELTA):
        if not 0 < flag.value < 1:
            raise ValueError(f"--{flag.name} must be in (0, 1), got {flag.value}")
    if not _TOLERANCE.value > 0:
        raise ValueError(f"--tolerance must be > 0 ([0, 1] intensity units), got {_TOLERANCE.value}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from emdiffuse_jax import restore, uncertainty
    from emdiffuse_jax.data import io
    from emdiffuse_jax.user_errors import clean_exit

    with clean_exit():  # bad input, an impossible calibration or a failing disk: one line, no traceback
        check_flags()
        out = io.check_output_folder(_OUTPUT.value, [_PREDICTIONS.value, _TARGET.value])
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS) if out.is_dir() else []
        if foreign:
            raise io.DataError(f"{out} holds files calibrate.py does not write ({', '.join(foreign[:3])}); choose a "
                               "new or empty output folder (a rerun replaces only calibration.json/.png)")
        mean, std, target, unit = restore.load_calibration_units(_PREDICTIONS.value, _TARGET.value, _UNIT.value,
                                                                 _BLOCK.value, log=lambda m: print(m, file=sys.stderr))
        scores = std.reshape(len(std), -1).mean(axis=1)
        errors = np.abs(mean - target).reshape(len(mean), -1).mean(axis=1)
        rcps = uncertainty.rcps_calibrate(mean, std, target, alpha=_ALPHA.value, delta=_DELTA.value)
        thr = uncertainty.calibrate_threshold(scores, errors, _TOLERANCE.value)
        out.mkdir(parents=True, exist_ok=True)
        result = {"unit": unit, "num_units": len(scores), "block": _BLOCK.value if unit == "block" else None,
                  "independence": "RCPS assumes independent units" + (
                      "; blocks of the same images are correlated, so the guarantee is approximate"
                      if unit == "block" else ""),
                  "intensity_units": "[0, 1] (the output map of the predictions)",
                  "intervals": {"lambda": rcps.lam, "empirical_miss_rate": rcps.risk,
                                "upper_bound": rcps.upper_bound, "alpha": rcps.alpha, "delta": rcps.delta,
                                "n": rcps.n},
                  "threshold": {"threshold": thr.threshold, "tolerance": thr.tolerance,
                                "true_positive_rate": thr.true_positive_rate,
                                "false_positive_rate": thr.false_positive_rate, "auc": thr.auc,
                                "num_bad": thr.num_bad, "num_good": thr.num_good}}
        tmp = out / ".calibration.tmp.json"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out / "calibration.json")
        plot(out / "calibration.png", scores, errors, thr, rcps)
    print(json.dumps(result, indent=2))


def run(argv=None):
    """Runs this program (``emdiffuse calibrate`` and ``launch/calibrate.py``)."""
    cli.run(main, __doc__, argv)
