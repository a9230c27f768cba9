"""The regression baseline: its configs, its L1 training through train.py, and its prediction through the
same tiling and stitching as the diffusion models."""

import pathlib

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from conftest import TINY_UNET
from emdiffuse_jax import checkpointing, inference, models, restore, train
from emdiffuse_jax.diffusion import objectives
from emdiffuse_jax.summary import read_metrics
from emdiffuse_jax.train_config import apply_regression
from train_helpers import stripe_sources, tiny_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
PAIRS = {"regression_n": "emdiffuse_n", "regression_r": "emdiffuse_r", "regression_i": "vemdiffuse_i",
         "regression_a": "vemdiffuse_a"}


def _parse(*args):
    values = flags.FlagValues()
    argv = ["prog", *args]
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    return values.config


@pytest.mark.parametrize("variant", ["", ":tiny"])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_regression_config_is_its_diffusion_config_without_the_noise_channel(name, variant):
    reg = _parse(f"--config={CONFIGS / name}.py{variant}")
    diff = _parse(f"--config={CONFIGS / PAIRS[name]}.py{variant}")
    train.check_config(reg)
    assert reg.objective == "regression" and diff.objective == "diffusion"
    assert reg.model.in_channel == diff.model.in_channel - 1
    assert reg.task == diff.task and reg.data == diff.data and reg.optim == diff.optim
    assert reg.num_steps == diff.num_steps and reg.batch_size == diff.batch_size
    assert reg.eval.num_samples == 1
    # the same backbone: only the first convolution loses the noisy-target input
    unet_reg, unet_diff = models.unet_config(reg.model), models.unet_config(diff.model)
    first_conv = 3 * 3 * unet_diff.inner_channel * unet_diff.channel_mults[0]
    assert models.count_params(unet_diff) - models.count_params(unet_reg) == first_conv


def test_check_config_names_the_channel_count_an_objective_needs():
    config = _parse(f"--config={CONFIGS / 'regression_n'}.py:tiny", "--config.model.in_channel=2")
    with pytest.raises(ValueError, match="objective 'regression' needs model.in_channel=1"):
        train.check_config(config)
    config = _parse(f"--config={CONFIGS / 'emdiffuse_n'}.py:tiny", "--config.objective=care")
    with pytest.raises(ValueError, match="objective 'care'"):
        train.check_config(config)


def test_regression_loss_is_the_l1_error_of_the_direct_prediction():
    cond = np.linspace(-1, 1, 2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.float32)
    target = np.zeros_like(cond)
    seen = {}

    def predict(x, gamma, slice_index):
        seen["gamma"] = np.asarray(gamma)
        return 0.5 * x

    np.testing.assert_allclose(objectives.regression_loss(predict, target, cond), np.abs(0.5 * cond).mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(seen["gamma"], 1.0)   # the noise-level input is held at "no noise"


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """A tiny regression model trained 12 steps by train_and_evaluate (validation at the end)."""
    config = apply_regression(tiny_config())
    config.num_steps, config.eval.every_steps = 12, 12
    workdir = tmp_path_factory.mktemp("regression")
    original = train.build_sources
    train.build_sources = stripe_sources
    try:
        train.train_and_evaluate(config, str(workdir))
    finally:
        train.build_sources = original
    return workdir


def test_regression_training_lowers_the_l1_loss_and_validates(regression_run):
    entries = read_metrics(regression_run / "metrics.jsonl")
    losses = [e["loss"] for e in entries if "loss" in e]
    assert len(losses) == 12 and losses[-1] < 0.7 * losses[0], losses
    val = [e for e in entries if "val_psnr" in e]
    assert val and np.isfinite(val[-1]["val_psnr"]) and val[-1]["val_mae"] < 1.0


def test_regression_checkpoint_predicts_one_deterministic_image(regression_run):
    loaded = checkpointing.load_model(regression_run)
    assert objectives.objective_of(loaded.meta) == "regression"
    notes = []
    assert restore.samples_for(loaded, 4, notes.append) == 1 and "K = 1" in notes[0]
    restorer = restore.make_restorer(loaded, inference.SamplerSpec("dpm", 3))
    image = np.random.default_rng(0).uniform(-1, 1, (40, 40)).astype(np.float32)
    a = inference.predict_image(restorer, image, jax.random.key(0), num_samples=1, tile=32, overlap=8)
    b = inference.predict_image(restorer, image, jax.random.key(7), num_samples=1, tile=32, overlap=8)
    np.testing.assert_array_equal(a.mean, b.mean)     # no randomness: the key is unused


def test_regression_prediction_runs_through_the_diffusion_tiling():
    """Through the Restorer, a 2 x 2 grid of tiles stitches the network's per-tile outputs: exact where a
    single tile covers the image, and equal to the whole-image output for an image of one tile."""
    unet = models.unet_config(dict(TINY_UNET, in_channel=1))
    params = models.init_params(unet, jax.random.key(3))
    loaded = checkpointing.LoadedModel(unet, params, "denoise", {"config": {"objective": "regression"}})
    restorer = restore.make_restorer(loaded, inference.SamplerSpec())
    apply = models.make_apply_fn(unet)
    image = np.random.default_rng(1).uniform(-1, 1, (32, 32)).astype(np.float32)
    whole = np.asarray(apply(params, image[None, ..., None], np.ones(1, np.float32)))[0, ..., 0]
    one = inference.predict_image(restorer, image, jax.random.key(0), num_samples=1, tile=32, overlap=8)
    np.testing.assert_allclose(one.mean, whole, atol=1e-5)
    big = np.random.default_rng(2).uniform(-1, 1, (48, 48)).astype(np.float32)
    tiled = inference.predict_image(restorer, big, jax.random.key(0), num_samples=1, tile=32, overlap=8)
    corner = np.asarray(apply(params, big[None, :32, :32, None], np.ones(1, np.float32)))[0, ..., 0]
    np.testing.assert_allclose(tiled.mean[:16, :16], corner[:16, :16], atol=1e-5)
    assert np.all(tiled.std == 0)
