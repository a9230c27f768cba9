"""launch/train.py run as pod workers: several processes on 127.0.0.1 joined by jax.distributed with CPU
(gloo) collectives, two simulated devices each, against one process holding all the devices."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from emdiffuse_jax import checkpointing, parallel, train
from emdiffuse_jax.summary import read_metrics

REPO = Path(__file__).resolve().parents[1]
# A network that compiles in seconds: what is checked is how processes split and join the work.
SMALL = ["--config.model.inner_channel=32", "--config.model.channel_mults=(1,)", "--config.model.attn_res=()",
         "--config.model.num_head_channels=32", "--config.data.patch_size=16", "--config.batch_size=4",
         "--config.eval.every_steps=0", "--config.log_every=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "SLURM_", "TPU_"))}
    return {**env, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices), "PYTHONPATH": str(REPO), **extra}


def _command(workdir, *overrides, config="emdiffuse_n.py:tiny"):
    return [sys.executable, str(REPO / "launch" / "train.py"), f"--config={REPO / 'configs' / config}",
            f"--workdir={workdir}", *overrides]


def _workers(workdir, overrides_per_process, devices=2, env=None, distributed="always"):
    """Starts one launch/train.py per entry of overrides_per_process as processes 0..n-1 of one run."""
    port, n = _free_port(), len(overrides_per_process)
    return [subprocess.Popen(
        _command(workdir, *overrides, f"--config.distributed={distributed}", f"--num_processes={n}",
                 f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}"),
        env=_env(devices, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, overrides in enumerate(overrides_per_process)]


def _finish(processes, timeout=900):
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    return [p.returncode for p in processes], outputs


def _run_single(workdir, *overrides, devices=4):
    result = subprocess.run(_command(workdir, *overrides, "--config.distributed=never"), env=_env(devices),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(workdir):
    return {e["step"]: e["loss"] for e in read_metrics(Path(workdir) / "metrics.jsonl") if "loss" in e}


def _check_same_losses(got, want, steps):
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-6)


# --- in this process ------------------------------------------------------------------------------------

def test_a_single_process_holds_every_row_and_replicated_keys_equal_host_keys():
    mesh = parallel.make_mesh(2, 4)
    assert parallel.process_row_blocks(parallel.batch_sharding(mesh), 8) == [(0, 8)]
    keys = parallel.global_keys(5, 2, mesh)
    assert keys[0].sharding.is_fully_replicated
    for i, key in enumerate(keys):
        want = jax.random.key_data(jax.random.fold_in(jax.random.key(5), i))
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(key)), np.asarray(want))


def test_validation_splits_its_padded_patches_over_the_devices_and_scores_only_the_real_ones(tiny_unet,
                                                                                             tiny_params):
    """Two patches on 8 devices (padded to 8 rows, one per device) score as on one device."""
    schedule = train._frozen(dict(kind="linear", n_timestep=3, linear_start=1e-4, linear_end=0.09))
    rng = np.random.default_rng(0)
    host = {"cond": rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32),
            "target": rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)}
    results = []
    for mesh in (parallel.make_mesh(1, 1, devices=jax.devices()[:1]), parallel.make_mesh(4, 2)):
        rows = train.padded_rows(2, mesh)
        padded = {k: np.concatenate([v, np.repeat(v[-1:], rows - 2, axis=0)]) for k, v in host.items()}
        batch = parallel.host_to_global(padded, {k: parallel.batch_sharding(mesh) for k in padded})
        params = parallel.host_to_global(tiny_params, parallel.state_sharding(mesh, tiny_params, 1024))
        validate = train.build_validation(tiny_unet, schedule, False, 2, "float32", mesh, 2)
        key = parallel.global_keys(1, 1, mesh)[0]
        metrics, mean, std = validate(params, batch, key)
        assert mean.shape == std.shape == (2, 32, 32, 1) and mean.sharding.is_fully_replicated
        results.append(({k: float(v) for k, v in metrics.items()}, np.asarray(mean)))
    # Each device runs the network on its own row only: activations of 1 row x K = 2 samples, never of the
    # whole padded batch (8 rows x 2 samples), which a replicated computation would show.
    compiled = validate.lower(params, batch, key).compile().as_text()
    assert "f32[2,32,32,16]" in compiled and "f32[16,32,32,16]" not in compiled
    assert train.padded_rows(2, parallel.make_mesh(4, 2)) == 8
    (m1, mean1), (m8, mean8) = results
    np.testing.assert_allclose(mean8, mean1, atol=1e-5)
    for name in ("psnr", "ssim", "mae"):
        np.testing.assert_allclose(m8[name], m1[name], rtol=1e-5)


def test_a_dcn_axis_must_divide_the_data_axis():
    with pytest.raises(ValueError, match="dcn_data=3"):
        parallel.make_mesh(4, 2, dcn_data=3)


def test_announced_processes_without_a_reachable_setup_stop_instead_of_training_alone(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    with pytest.raises(RuntimeError, match="Every worker stops"):
        parallel.maybe_initialize_distributed("auto")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
        parallel.maybe_initialize_distributed("auto")


# --- separate processes ---------------------------------------------------------------------------------

def test_failed_initialisation_under_auto_stops_every_worker(tmp_path):
    """SLURM announced two tasks but gave no coordinator: both workers exit with the fix, nothing written."""
    processes = [subprocess.Popen(_command(tmp_path, *SMALL), env=_env(2, SLURM_NTASKS="2"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    codes, outputs = _finish(processes, timeout=300)
    assert all(code != 0 for code in codes), outputs
    for out in outputs:
        assert "jax.distributed.initialize failed" in out and "--coordinator_address" in out, out[-2000:]
    assert not (tmp_path / "checkpoints").exists()


def test_workers_with_different_configs_both_stop_naming_the_difference(tmp_path):
    codes, outputs = _finish(_workers(tmp_path, [SMALL, [*SMALL, "--config.seed=3"]]), timeout=300)
    assert all(code != 0 for code in codes), outputs
    for out in outputs:
        assert "processes [1] were started with a different config or workdir" in out, out[-2000:]
    assert "config.seed=3 vs 0 on process 0" in outputs[1]
    assert not (tmp_path / "checkpoints").exists()


def test_two_workers_train_like_one_process_with_all_devices_and_log_once(tmp_path):
    steps = ["--config.num_steps=4", "--config.checkpoint.every_steps=2"]
    _run_single(tmp_path / "one", *SMALL, *steps)
    codes, outputs = _finish(_workers(tmp_path / "two", [SMALL + steps] * 2))
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    _check_same_losses(_losses(tmp_path / "two"), _losses(tmp_path / "one"), 4)
    assert "step 4/4 | loss" in outputs[0] and "| loss" not in outputs[1]   # progress on process 0 only
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["2", "4"]
    assert not list((tmp_path / "two" / "checkpoints").glob("*tmp*"))


@pytest.mark.slow
def test_tiny_config_two_and_four_workers_log_the_losses_of_one_process(tmp_path):
    """The issue's acceptance run: 12 steps of the tiny config, 2 x 2 and 4 x 1 devices against 1 x 4."""
    steps = ["--config.num_steps=12", "--config.log_every=1", "--config.eval.every_steps=6",
             "--config.eval.sample_steps=2"]
    _run_single(tmp_path / "one", *steps)
    want = _losses(tmp_path / "one")
    for n, devices in ((2, 2), (4, 1)):
        codes, outputs = _finish(_workers(tmp_path / f"p{n}", [steps] * n, devices=devices))
        assert codes == [0] * n, outputs[0][-3000:]
        _check_same_losses(_losses(tmp_path / f"p{n}"), want, 12)
        val = [e for e in read_metrics(tmp_path / f"p{n}" / "metrics.jsonl") if "val_psnr" in e]
        want_val = [e for e in read_metrics(tmp_path / "one" / "metrics.jsonl") if "val_psnr" in e]
        assert [e["step"] for e in val] == [6, 12]
        np.testing.assert_allclose([e["val_psnr"] for e in val], [e["val_psnr"] for e in want_val], rtol=1e-4)


@pytest.mark.slow
def test_sigkill_of_both_workers_resumes_to_the_uninterrupted_losses(tmp_path):
    steps = ["--config.num_steps=10", "--config.checkpoint.every_steps=3"]
    _run_single(tmp_path / "one", *SMALL, *steps)
    killed = tmp_path / "two"
    processes = _workers(killed, [SMALL + steps] * 2)
    deadline = time.time() + 900
    while time.time() < deadline and max(_losses(killed) if (killed / "metrics.jsonl").exists() else [0]) < 7:
        time.sleep(0.2)
    for p in processes:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert max(_losses(killed)) < 10, "the run finished before it could be killed"
    codes, outputs = _finish(_workers(killed, [SMALL + steps] * 2))
    assert codes == [0, 0], outputs[0][-3000:]
    assert "resuming from" in outputs[0]
    _check_same_losses(_losses(killed), _losses(tmp_path / "one"), 10)


@pytest.mark.slow
def test_checkpoint_of_two_workers_restores_in_one_process_on_other_meshes(tmp_path):
    """Saved on a 2 x 2 (data x fsdp) mesh by two processes at step 3; resumed by one process on 1 x 4 and
    4 x 1, step 4 matches an uninterrupted single-process run."""
    mesh = ["--config.mesh.fsdp_min_size=64", "--config.checkpoint.every_steps=3"]
    _run_single(tmp_path / "one", *SMALL, *mesh, "--config.num_steps=4", "--config.mesh.data=2",
                "--config.mesh.fsdp=2")
    first = [*SMALL, *mesh, "--config.num_steps=3", "--config.mesh.data=2", "--config.mesh.fsdp=2"]
    codes, outputs = _finish(_workers(tmp_path / "two", [first] * 2))
    assert codes == [0, 0], outputs[0][-3000:]
    want = _losses(tmp_path / "one")
    for data, fsdp in ((1, 4), (4, 1)):
        workdir = tmp_path / f"resume_{data}x{fsdp}"
        shutil.copytree(tmp_path / "two", workdir)
        result = _run_single(workdir, *SMALL, *mesh, "--config.num_steps=4", f"--config.mesh.data={data}",
                             f"--config.mesh.fsdp={fsdp}")
        assert "resuming from" in result.stderr and "at step 3" in result.stderr
        _check_same_losses(_losses(workdir), want, 4)


@pytest.mark.slow
def test_sigterm_of_one_worker_saves_the_same_step_everywhere_and_the_restart_matches(tmp_path):
    """A preemption notice to one worker: JAX's preemption service stops both at one step with a saved
    checkpoint; the restart ends with the losses of an uninterrupted run."""
    steps = ["--config.num_steps=30", "--config.checkpoint.every_steps=100"]
    _run_single(tmp_path / "one", *SMALL, *steps)
    stopped = tmp_path / "two"
    processes = _workers(stopped, [SMALL + steps] * 2)
    deadline = time.time() + 900
    while time.time() < deadline and max(_losses(stopped) if (stopped / "metrics.jsonl").exists() else [0]) < 3:
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)
    codes, outputs = _finish(processes)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    saved = sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 30, saved
    codes, outputs = _finish(_workers(stopped, [SMALL + steps] * 2))
    assert codes == [0, 0] and f"at step {saved[0]}" in outputs[0]
    _check_same_losses(_losses(stopped), _losses(tmp_path / "one"), 30)


@pytest.mark.slow
def test_a_dcn_axis_over_two_processes_trains_like_one_process(tmp_path):
    """mesh.dcn_data=2 with two processes of two devices: data axis 2 (DCN) x 2 (local); same losses."""
    steps = ["--config.num_steps=3", "--config.mesh.dcn_data=2"]
    _run_single(tmp_path / "one", *SMALL, "--config.num_steps=3")
    codes, outputs = _finish(_workers(tmp_path / "two", [SMALL + steps] * 2))
    assert codes == [0, 0], outputs[0][-3000:]
    assert "mesh {'data': 4, 'fsdp': 1}" in outputs[0]
    _check_same_losses(_losses(tmp_path / "two"), _losses(tmp_path / "one"), 3)
