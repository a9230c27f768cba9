"""Evaluation: pixel metrics, Fourier measures, uncertainty-vs-error statistics, validation, comparison runs.

  metrics      PSNR / SSIM / MAE (jittable, batched)
  fourier      Fourier ring correlation and radially averaged power spectra (NumPy)
  blocks       block scores vs block errors: Spearman correlation and ROC AUC of flagging the worst blocks
  validation   validation during training (EMA weights, test-time sampler) and its TensorBoard panel
  compare      predictions on disk against ground truth: the tables of launch/evaluate.py
  plots        PNG figures of a comparison (needs matplotlib: pip install "emdiffuse_jax[plots]")

The names training uses are importable from the package itself.
"""

from emdiffuse_jax.evaluation.metrics import DATA_RANGE, image_metrics, mae, psnr, ssim
from emdiffuse_jax.evaluation.validation import make_regression_validation_fn, make_validation_fn, summary_panel

__all__ = ["DATA_RANGE", "image_metrics", "mae", "psnr", "ssim", "make_regression_validation_fn", "make_validation_fn",
           "summary_panel"]
