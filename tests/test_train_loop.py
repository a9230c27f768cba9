"""train_and_evaluate end to end on the tiny setting: exact resume, loss decrease, NaN guard, model
identity checks, the inference loader, and the files a run leaves in its workdir."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from emdiffuse_jax import checkpointing, models, parallel, train
from emdiffuse_jax.summary import read_metrics
from train_helpers import StripeSource, stripe_sources, tiny_config


def _losses(workdir):
    return {e["step"]: e["loss"] for e in read_metrics(workdir / "metrics.jsonl") if "loss" in e}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step run (with validation) and one stopped after 3 steps, then resumed."""
    original = train.build_sources
    train.build_sources = stripe_sources
    try:
        full = tmp_path_factory.mktemp("full")
        config = tiny_config()
        config.eval.every_steps, config.eval.sample_steps, config.eval.num_samples = 3, 2, 2
        state_full = train.train_and_evaluate(config, str(full))

        resumed = tmp_path_factory.mktemp("resumed")
        config = tiny_config()
        config.num_steps = 3
        train.train_and_evaluate(config, str(resumed))
        # A killed process may have logged steps after its last checkpoint: resuming must drop them.
        with open(resumed / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")
        config.num_steps = 6
        state_resumed = train.train_and_evaluate(config, str(resumed))
    finally:
        train.build_sources = original
    return {"full": full, "resumed": resumed, "state_full": state_full, "state_resumed": state_resumed}


def test_resumed_run_reproduces_the_uninterrupted_losses_step_for_step(runs):
    full, resumed = _losses(runs["full"]), _losses(runs["resumed"])
    assert sorted(full) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert [resumed[s] for s in range(1, 7)] == [full[s] for s in range(1, 7)]
    for a, b in zip(jax.tree.leaves(runs["state_full"]), jax.tree.leaves(runs["state_resumed"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_workdir_holds_config_checkpoints_metrics_and_tensorboard_images(runs):
    full = runs["full"]
    assert json.loads((full / "config.json").read_text())["task"] == "denoise"
    val = [e for e in read_metrics(full / "metrics.jsonl") if "val_psnr" in e]
    assert [e["step"] for e in val] == [3, 6] and all(np.isfinite(e["val_ssim"]) for e in val)
    steps = sorted(int(p.name) for p in (full / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 6 and len(steps) <= 4          # keep 3 latest + 1 best
    events = list((full / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    blob = events[0].read_bytes()
    assert b"train/loss" in blob and b"val/psnr" in blob
    assert b"val/0/condition_mean_std_target" in blob and b"\x89PNG" in blob


def test_load_model_returns_the_ema_weights_of_the_newest_checkpoint(runs):
    loaded = checkpointing.load_model(runs["full"], task="denoise")
    assert loaded.task == "denoise" and loaded.meta["step"] == 6
    assert loaded.unet == models.unet_config(tiny_config().model)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(runs["state_full"].ema_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    step_dir = checkpointing.load_model(runs["full"] / "checkpoints" / "3")
    assert step_dir.meta["step"] == 3


def test_the_ema_is_valid_from_the_first_steps_and_validation_scores_both_weights(runs):
    config = tiny_config()   # ema_decay 0.9: without the warm-up 0.9^6 = 53 % of the initial weights would remain
    init = models.init_params(models.unet_config(config.model), jax.random.fold_in(jax.random.key(config.seed), 0))
    state = runs["state_full"]
    flat = lambda tree: np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])  # noqa: E731
    ema, online, start = flat(state.ema_params), flat(state.params), flat(init)
    assert np.linalg.norm(ema - online) < 0.5 * np.linalg.norm(ema - start)
    val = [e for e in read_metrics(runs["full"] / "metrics.jsonl") if "val_psnr" in e]
    assert all(np.isfinite(e["val_online_psnr"]) for e in val)


def test_load_model_gives_the_online_weights_on_request_and_both_predict(runs):
    from emdiffuse_jax import inference, restore

    online = checkpointing.load_model(runs["full"], task="denoise", weights="online")
    ema = checkpointing.load_model(runs["full"], task="denoise")
    assert online.meta["weights"] == "online" and ema.meta["weights"] == "ema"
    for a, b in zip(jax.tree.leaves(online.params), jax.tree.leaves(runs["state_full"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    image = np.linspace(-1, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    means = [inference.predict_image(restore.make_restorer(m, inference.SamplerSpec("ddim", 2)), image,
                                     jax.random.key(0), num_samples=1, tile=32, overlap=8).mean
             for m in (online, ema)]
    assert all(np.isfinite(m).all() for m in means) and np.abs(means[0] - means[1]).max() > 1e-4
    with pytest.raises(ValueError, match="weights must be one of"):
        checkpointing.load_model(runs["full"], weights="best")


def test_load_model_refuses_a_checkpoint_of_another_task(runs):
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="'denoise' model but task 'vem_i'"):
        checkpointing.load_model(runs["full"], task="vem_i")


def test_workdir_of_another_model_refuses_to_resume(runs, tmp_path):
    config = tiny_config("vem_i")
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="task 'denoise' .checkpoint. vs 'vem_i'"):
        train.train_and_evaluate(config, str(runs["full"]))
    config = tiny_config()
    config.model.inner_channel = 32
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="model.inner_channel 16"):
        train.train_and_evaluate(config, str(runs["full"]))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_sources", lambda config, intensity=None: stripe_sources(config, nan_at=4))
    with pytest.raises(FloatingPointError, match="last good checkpoint .step 4."):
        train.train_and_evaluate(tiny_config(), str(tmp_path))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    loaded = checkpointing.load_model(tmp_path)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(loaded.params))


def test_few_steps_lower_the_loss_on_a_fixed_batch():
    config = tiny_config()
    mesh = parallel.make_mesh(-1, 2)
    programs = train.programs_for(config, mesh)
    batch = parallel.global_batch(StripeSource("denoise", 32).batch(0, 0, 0, 1, 8), parallel.batch_sharding(mesh))
    key = jax.device_put(jax.random.key(5), parallel.replicated(mesh))

    def fixed_loss(state):
        """The step's loss evaluated as if at step 0: the same noise levels, noise and dropout every time,
        so only the parameters change (the updated state it returns is discarded)."""
        probe = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), state.replace(step=np.int32(0)),
                             programs.shardings)
        return float(programs.train_step(probe, batch, key)[1]["loss"])

    state = programs.init(jax.random.key(0))
    before = fixed_loss(state)
    for _ in range(25):
        state, _ = programs.train_step(state, batch, key)
    after = fixed_loss(state)
    assert after < 0.7 * before, (before, after)


def test_sigterm_saves_the_current_step_and_stops_cleanly(tmp_path, monkeypatch):
    class TerminatedSource(StripeSource):
        def batch(self, seed, step, *args):
            if step == 2:   # the scheduler's preemption notice arrives while batches are being prepared
                os.kill(os.getpid(), signal.SIGTERM)
            return super().batch(seed, step, *args)

    config = tiny_config()
    handler_before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(train, "build_sources", lambda c, intensity=None: (TerminatedSource("denoise", 32),
                                                           StripeSource("denoise", 32, offset=10 ** 6)))
    state = train.train_and_evaluate(config, str(tmp_path))
    stopped = int(state.step)
    assert 1 <= stopped < config.num_steps
    assert checkpointing.load_model(tmp_path).meta["step"] == stopped
    assert signal.getsignal(signal.SIGTERM) == handler_before   # the previous handler is back


def test_init_from_a_trained_workdir_starts_from_its_weights(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "build_sources", stripe_sources)
    config = tiny_config()
    config.init_from = str(runs["full"])
    config.num_steps = 1
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    assert _losses(tmp_path)[1] < 0.8 * _losses(runs["full"])[1]   # same batch and key as the source's step 1
    config.model.inner_channel = 32
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="do not fit"):
        train.train_and_evaluate(config, str(tmp_path / "other"))


@pytest.mark.parametrize("damage", ["state_deleted", "state_truncated", "meta_missing"])
def test_resume_falls_back_over_a_damaged_newest_checkpoint_and_a_torn_metrics_line(runs, tmp_path, monkeypatch,
                                                                                     caplog, damage):
    monkeypatch.setattr(train, "build_sources", stripe_sources)
    config = tiny_config()
    config.num_steps = 4
    train.train_and_evaluate(config, str(tmp_path))   # checkpoints at steps 2 and 4
    newest = tmp_path / "checkpoints" / "4"
    if damage == "state_deleted":     # e.g. a disk that filled up while the save was being written
        shutil.rmtree(newest / "state")
    elif damage == "state_truncated":
        for p in (newest / "state").rglob("*"):
            if p.is_file() and p.parent.name == "d":
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        shutil.rmtree(newest / "meta")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')   # a line cut short by a kill
    config.num_steps = 6
    with caplog.at_level("WARNING", logger="emdiffuse_jax"):
        state = train.train_and_evaluate(config, str(tmp_path))
    assert "checkpoint step 4 is damaged or incomplete" in caplog.text and "resuming from step 2" in caplog.text
    assert (tmp_path / "damaged_checkpoints" / "4").is_dir()   # kept for inspection, not deleted
    full = _losses(runs["full"])
    assert _losses(tmp_path) == full
    for a, b in zip(jax.tree.leaves(runs["state_full"]), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
