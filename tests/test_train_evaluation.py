"""PSNR / SSIM / MAE against scikit-image, and the validation runner's vEM slice bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from emdiffuse_jax import evaluation
from emdiffuse_jax.diffusion import schedules


def test_metrics_match_scikit_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 40, 36, 2)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    for i in range(2):
        ref_ssim = np.mean([structural_similarity(x[i, ..., c], y[i, ..., c], gaussian_weights=True,
                                                  use_sample_covariance=False, data_range=2.0) for c in range(2)])
        np.testing.assert_allclose(evaluation.ssim(x, y)[i], ref_ssim, rtol=1e-4)
        np.testing.assert_allclose(evaluation.psnr(x, y)[i], peak_signal_noise_ratio(x[i], y[i], data_range=2.0),
                                   rtol=1e-5)
        np.testing.assert_allclose(evaluation.mae(x, y)[i], np.abs(x[i] - y[i]).mean(), rtol=1e-5)


def test_vem_validation_generates_every_slice_in_order():
    """A stand-in network whose x0 prediction is slice_index / 10 must yield slice k == k / 10 exactly."""
    def make_denoise(params):
        def denoise(x, gamma, slice_index):
            y, g = x[..., -1:], gamma[:, None, None, None]
            x0 = (slice_index.astype(jnp.float32) / 10 + params)[:, None, None, None]
            return (y / jnp.sqrt(g) - x0) / jnp.sqrt(1 / g - 1)
        return denoise

    schedule = schedules.make_schedule(**{**schedules.TEST_SCHEDULE, "n_timestep": 3})
    validate = jax.jit(evaluation.make_validation_fn(make_denoise, schedule, vem=True, num_samples=2))
    b, h, w, slices = 2, 16, 16, 4
    target = np.broadcast_to(np.arange(slices, dtype=np.float32) / 10, (b, h, w, slices))
    metrics, mean, std = validate(jnp.float32(0.0), {"cond": np.zeros((b, h, w, 2), np.float32),
                                                     "target": target}, jax.random.key(0))
    assert mean.shape == std.shape == (b, h, w, slices)
    np.testing.assert_allclose(mean, target, atol=1e-5)
    np.testing.assert_allclose(std, 0.0, atol=1e-5)
    assert float(metrics["mae"]) < 1e-5 and float(metrics["ssim"]) > 0.999


def test_summary_panel_shows_condition_mean_std_target_side_by_side():
    h, w = 8, 10
    panel = evaluation.summary_panel(np.full((h, w, 1), -1.0), np.zeros((h, w, 1)), np.full((h, w, 1), 0.25),
                                     np.ones((h, w, 1)))
    assert panel.shape == (h, 4 * w)
    np.testing.assert_allclose(panel[0, ::w], [0.0, 0.5, 0.5, 1.0])
