"""Validation during training with the EMA weights and the test-time sampler, and its TensorBoard panel.

Fixes the reference's validation, which sampled with the 2000-step training schedule and the online
weights: here validation uses the EMA parameters and the test schedule with a configurable, small number
of steps. Images are NHWC in [-1, 1]; metrics are per image (averaged over channels for vEM slices).
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from emdiffuse_jax.evaluation.metrics import image_metrics


def make_validation_fn(make_denoise: Callable, schedule: Any, *, vem: bool, num_samples: int,
                       residual: bool = False) -> Callable:
    """Returns ``validate(ema_params, batch, key) -> (metrics, mean, std)``, jittable.

    make_denoise: ``params -> denoise(x, gamma, slice_index)`` in eval mode (models.make_denoise_fn
    partially applied). Each image is sampled ``num_samples`` times with the test-schedule DDPM sampler;
    the mean is scored against the target and the per-pixel std (ddof=1) returned for display. For vEM
    every one of the z-1 target slices is generated (one enlarged batch with slice indices). residual: the
    model samples the residual parametrisation (diffusion.objectives), mapped back to the target here.
    """
    from emdiffuse_jax.diffusion import objectives
    from emdiffuse_jax.diffusion.ensemble import ensemble_mean_var
    from emdiffuse_jax.diffusion.samplers import collect_slices, ddpm_sample, expand_slices

    def validate(params, batch, key):
        cond, target = batch["cond"], batch["target"]
        denoise = make_denoise(params)
        slices = target.shape[-1]
        cond, slice_index = expand_slices(cond, slices) if vem else (cond, None)

        def sample(k):
            y = ddpm_sample(denoise, cond, k, schedule, slice_index=slice_index)
            if residual:
                y = objectives.from_residual(y, objectives.simple_estimate(cond, slice_index, slices))
            return y

        mean, var = ensemble_mean_var(sample, key, num_samples, ddof=1 if num_samples > 1 else 0)
        std = jnp.sqrt(var)
        if vem:
            mean, std = collect_slices(mean, slices), collect_slices(std, slices)
        return image_metrics(mean, target), mean, std

    return validate


def make_regression_validation_fn(make_predict: Callable, *, vem: bool) -> Callable:
    """``validate(ema_params, batch, key) -> (metrics, prediction, zero std)`` for the regression baseline.

    make_predict: ``params -> predict(cond, gamma, slice_index)`` (models.make_denoise_fn partially applied;
    the network's output is the target itself). For vEM every one of the z-1 target slices is predicted.
    """
    from emdiffuse_jax.diffusion.objectives import regression_predict
    from emdiffuse_jax.diffusion.samplers import collect_slices, expand_slices

    def validate(params, batch, key):
        del key
        cond, target = batch["cond"], batch["target"]
        slices = target.shape[-1]
        cond, slice_index = expand_slices(cond, slices) if vem else (cond, None)
        prediction = regression_predict(make_predict(params), cond, slice_index)
        if vem:
            prediction = collect_slices(prediction, slices)
        return image_metrics(prediction, target), prediction, jnp.zeros_like(prediction)

    return validate


def summary_panel(cond: np.ndarray, mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One image row [condition channels | mean | std | target] in [0, 1] for TensorBoard.

    cond, mean, std, target: (H, W, C) for one image; vEM shows the first and the middle generated
    slice; std is scaled so that 0..0.5 (in [-1, 1] units) fills the range.
    """
    def cols(x):
        return [x[..., i] for i in sorted({0, x.shape[-1] // 2})]

    tiles = ([(c + 1) / 2 for c in cols(cond)] + [(m + 1) / 2 for m in cols(mean)]
             + [np.clip(s / 0.5, 0, 1) for s in cols(std)] + [(t + 1) / 2 for t in cols(target)])
    return np.clip(np.concatenate(tiles, axis=1), 0.0, 1.0)
