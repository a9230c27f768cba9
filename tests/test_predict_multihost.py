"""launch/isotropic.py across processes: two jax.distributed processes on 127.0.0.1 (CPU), each computing
its block of slabs into one shared output, against one process computing every slab."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emdiffuse_jax import parallel
from test_predict_launch import TINY, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_process_shares_are_contiguous_balanced_and_cover_every_slab_once():
    for items, count in ((5, 2), (2, 3), (7, 4), (0, 2), (8, 1)):
        shares = [parallel.process_share(items, i, count) for i in range(count)]
        assert [i for share in shares for i in share] == list(range(items))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert parallel.process_share(5, 1, 2) == range(3, 5)
    with pytest.raises(ValueError, match="process 2 of 2"):
        parallel.process_share(5, 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(ckpt, volume, output, *extra):
    return [sys.executable, str(REPO / "launch" / "isotropic.py"), f"--checkpoint={ckpt}", f"--input={volume}",
            f"--output={output}", "--z_factor=2", "--num_samples=2", "--sampler=ddim", "--steps=2", "--tile=16",
            "--overlap=4", "--seed=3", *extra]


def _env():
    return {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


# ~55 s on 2 shared cores each: the TIFF case in the default run, OME-Zarr (same code path, shared store) slow.
@pytest.mark.parametrize("fmt", ["tiff", pytest.param("ome-zarr", marks=pytest.mark.slow)])
def test_two_processes_reconstruct_the_single_process_volume_each_computing_its_slabs(tmp_path, fmt):
    ckpt = save_checkpoint(tmp_path / "vem", "vem_i", {**TINY, "in_channel": 3, "vem": True}, z_factor=2)
    rng = np.random.default_rng(0)
    volume = rng.integers(20, 230, (5, 20, 24)).astype(np.uint8)   # 4 slabs: 2 per process
    tifffile.imwrite(tmp_path / "vol.tif", volume, photometric="minisblack")
    single = subprocess.run(_command(ckpt, tmp_path / "vol.tif", tmp_path / "one", f"--format={fmt}"),
                            capture_output=True, text=True, timeout=300, env=_env())
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    workers = [subprocess.Popen(
        _command(ckpt, tmp_path / "vol.tif", tmp_path / "two", f"--format={fmt}", "--num_processes=2",
                 f"--process_id={i}", f"--coordinator_address=127.0.0.1:{port}"),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "process 0 of 2: slabs 0..1 of 4" in outputs[0] and "process 1 of 2: slabs 2..3 of 4" in outputs[1]
    # Each process computed (and logged) only its own slabs; progress lines come from process 0 only.
    assert "slab 1/4" in outputs[0] and "slab 2/4" in outputs[0] and "slab 3/4" not in outputs[0]
    assert "slab " not in outputs[1].replace("slabs 2..3", "")
    if fmt == "tiff":
        for name in ("mean.tif", "std.tif"):
            want, got = tifffile.imread(tmp_path / "one" / name), tifffile.imread(tmp_path / "two" / name)
            assert got.shape == (9, 20, 24) and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    else:
        import zarr

        for name in ("mean.zarr", "std.zarr"):
            want = zarr.open_group(str(tmp_path / "one" / name), mode="r")
            got = zarr.open_group(str(tmp_path / "two" / name), mode="r")
            assert sorted(got.array_keys()) == sorted(want.array_keys())
            for level in want.array_keys():
                np.testing.assert_array_equal(got[level][:], want[level][:])
    assert not (tmp_path / "two" / ".partial").exists()
    import json

    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["slab_scores"] == one["slab_scores"] and two["output_shape"] == [9, 20, 24]
