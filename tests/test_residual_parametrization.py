"""The residual parametrisation: the network diffuses (target - simple estimate) / 2, mapped back at sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_VEM_UNET
from emdiffuse_jax import checkpointing, inference, models, restore, train, train_config
from emdiffuse_jax.diffusion import objectives, schedules
from emdiffuse_jax.evaluation import make_validation_fn

GAMMAS = jnp.asarray(schedules.make_schedule(**schedules.TRAIN_SCHEDULE).gammas)


def zero_x0(x, gamma, slice_index=None):
    """A stand-in network that predicts exactly the noise of a clean variable equal to 0."""
    return x[..., -1:] / jnp.sqrt(1.0 - gamma[:, None, None, None])


def _slices(b=2, h=16, w=16, z=4, seed=0):
    rng = np.random.default_rng(seed)
    earlier, later = rng.uniform(-0.8, 0.8, (2, b, h, w, 1)).astype(np.float32)
    depth = (np.arange(1, z) / z)[None, None, None, :]
    targets = ((1 - depth) * earlier + depth * later).astype(np.float32)   # exactly linear in z
    return np.concatenate([later, earlier], -1), targets


def test_simple_estimate_interpolates_the_two_slices_and_round_trips():
    cond, targets = _slices()
    for c in range(3):
        est = objectives.simple_estimate(cond, jnp.full((2,), c), num_slices=3)
        np.testing.assert_allclose(est[..., 0], targets[..., c], atol=1e-6)
    y = jnp.asarray(targets[..., :1])
    r = objectives.to_residual(y, -y)
    assert float(jnp.abs(r).max()) <= 1.0
    np.testing.assert_allclose(objectives.from_residual(r, -y), y, atol=1e-6)


def test_residual_loss_diffuses_the_difference_to_the_interpolation():
    """Targets that are exactly the linear interpolation have residual 0, which the zero-x0 network predicts."""
    cond, targets = _slices()
    key = jax.random.key(0)
    residual = objectives.vem_noise_prediction_loss(zero_x0, targets, cond, key, GAMMAS, residual=True)
    direct = objectives.vem_noise_prediction_loss(zero_x0, targets, cond, key, GAMMAS)
    assert float(residual) < 1e-6 < float(direct)


def test_residual_model_that_learnt_nothing_returns_the_simple_estimate():
    """Through the prediction path (restore.sample_fn_for + Restorer + tiling): r = 0 gives the interpolation."""
    meta = {"config": {"parametrization": "residual"}, "z_factor": 4}
    loaded = checkpointing.LoadedModel(models.unet_config(TINY_VEM_UNET), {}, "vem_i", meta)
    restorer = inference.Restorer(lambda p, x, g, s: zero_x0(x, g, s), {},
                                  restore.sample_fn_for(loaded, inference.SamplerSpec("ddim", 4)), batch_per_device=4)
    rng = np.random.default_rng(1)
    earlier, later = rng.uniform(-0.8, 0.8, (2, 40, 40)).astype(np.float32)
    pred = inference.predict_between(restorer, earlier, later, 4, jax.random.key(0), num_samples=2, tile=32,
                                     overlap=8)
    for c in range(3):
        w = (c + 1) / 4
        np.testing.assert_allclose(pred.mean[c], (1 - w) * earlier + w * later, atol=1e-4)


def test_validation_maps_residual_samples_back():
    cond, targets = _slices()
    schedule = schedules.make_schedule(**{**schedules.TEST_SCHEDULE, "n_timestep": 3})
    validate = jax.jit(make_validation_fn(lambda p: zero_x0, schedule, vem=True, num_samples=2, residual=True))
    metrics, mean, _ = validate({}, {"cond": cond, "target": targets}, jax.random.key(0))
    np.testing.assert_allclose(mean, targets, atol=1e-4)
    assert float(metrics["mae"]) < 1e-4


def test_unknown_or_mismatched_parametrization_is_refused():
    config = train_config.apply_regression(train_config.apply_tiny(train_config.base_config("vem_i")))
    config.parametrization = "residual"
    with pytest.raises(ValueError, match="applies to objective 'diffusion' only"):
        train.check_config(config)
    with pytest.raises(ValueError, match="parametrization 'delta'"):
        objectives.parametrization_of({"config": {"parametrization": "delta"}})
    assert objectives.parametrization_of({"source": "torch"}) == "direct"
