"""The command-line trainer as a user runs it (slow: separate processes, each compiling the network)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import shared_path
from emdiffuse_jax import checkpointing
from emdiffuse_jax.summary import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _train_command(config, workdir, *overrides):
    return [sys.executable, str(REPO / "launch" / "train.py"), f"--config={REPO / 'configs' / config}",
            f"--workdir={workdir}", *overrides]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def _losses(workdir):
    return {e["step"]: e["loss"] for e in read_metrics(Path(workdir) / "metrics.jsonl") if "loss" in e}


@pytest.mark.slow
def test_tiny_vem_i_trains_on_the_fibsem_stack_and_its_checkpoint_loads(tmp_path):
    stack = shared_path("data", "fibsem-medulla-250.tif")
    result = subprocess.run(_train_command("vemdiffuse_i.py:tiny", tmp_path, "--config.num_steps=6",
                                           "--config.eval.every_steps=6", "--config.eval.sample_steps=2"),
                            env=_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(stack) in result.stderr and "steps/s" in result.stderr and "ETA" in result.stderr
    loaded = checkpointing.load_model(tmp_path, task="vem_i")
    assert loaded.unet.vem and loaded.meta["z_factor"] == 6 and loaded.meta["step"] == 6


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_losses(tmp_path):
    overrides = ["--config.num_steps=14", "--config.log_every=1", "--config.checkpoint.every_steps=4",
                 "--config.eval.every_steps=0"]
    reference = tmp_path / "reference"
    subprocess.run(_train_command("emdiffuse_n.py:tiny", reference, *overrides), env=_env(), check=True,
                   capture_output=True, timeout=1200)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command("emdiffuse_n.py:tiny", killed, *overrides), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200
    while time.time() < deadline and max(_losses(killed) if (killed / "metrics.jsonl").exists() else [0]) < 10:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert max(_losses(killed)) < 14, "the run finished before it could be killed"
    subprocess.run(_train_command("emdiffuse_n.py:tiny", killed, *overrides), env=_env(), check=True,
                   capture_output=True, timeout=1200)
    want, got = _losses(reference), _losses(killed)
    assert sorted(got) == list(range(1, 15))
    assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
    assert json.loads((killed / "config.json").read_text())["num_steps"] == 14


@pytest.mark.slow
def test_run_sigkilled_during_a_checkpoint_save_resumes_to_the_uninterrupted_losses(tmp_path):
    """SIGKILL the moment a save's temporary folder appears: the resumed run still matches step for step."""
    overrides = ["--config.num_steps=12", "--config.log_every=1", "--config.checkpoint.every_steps=2",
                 "--config.eval.every_steps=0"]
    reference = tmp_path / "reference"
    subprocess.run(_train_command("emdiffuse_n.py:tiny", reference, *overrides), env=_env(), check=True,
                   capture_output=True, timeout=1200)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_train_command("emdiffuse_n.py:tiny", killed, *overrides), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, caught, ckpts = time.time() + 1200, None, killed / "checkpoints"
    while time.time() < deadline and process.poll() is None and caught is None:
        entries = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
        if any(name.isdigit() for name in entries):   # one save done: kill inside a later one
            caught = next((name for name in entries if "tmp" in name), None)
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert caught is not None, "no save was in progress when the run ended"
    result = subprocess.run(_train_command("emdiffuse_n.py:tiny", killed, *overrides), env=_env(),
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    want, got = _losses(reference), _losses(killed)
    assert sorted(got) == list(range(1, 13)) and [got[s] for s in sorted(got)] == [want[s] for s in sorted(want)]
