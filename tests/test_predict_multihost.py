"""Isotropic reconstruction shared by two processes (jax.distributed on 127.0.0.1, CPU devices): each
takes its slabs, both write into one output, and the result equals a single-process run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from emdiffuse_jax.data import io

TESTS = Path(__file__).resolve().parent


def _reconstruct(stack, output, fmt, processes):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "SLURM_", "TPU_"))},
           "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    workers = [subprocess.Popen([sys.executable, str(TESTS / "multihost_volume_worker.py"), f"127.0.0.1:{port}",
                                 str(processes), str(i), str(stack), str(output), fmt],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(processes)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * processes, "\n".join(o[-2000:] for o in outputs)
    return outputs


@pytest.mark.parametrize("fmt,names", [("tiff", ("mean.tif", "std.tif")), ("ome-zarr", ("mean.zarr", "std.zarr"))])
def test_two_processes_split_the_slabs_and_write_the_single_process_volume(tmp_path, fmt, names):
    slices = np.stack([np.full((40, 36), v, np.uint8) for v in (30, 90, 150, 210, 120)])
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, slices, photometric="minisblack")
    _reconstruct(stack, tmp_path / "one", fmt, 1)
    logs = _reconstruct(stack, tmp_path / "two", fmt, 2)
    assert "process 0 of 2: 2 slabs" in logs[0] and "process 1 of 2: 2 slabs" in logs[1]
    for name in names:
        read = (lambda p: zarr.open_array(store=str(p / "0"), mode="r")[:]) if fmt == "ome-zarr" else io.read_volume
        np.testing.assert_array_equal(np.asarray(read(tmp_path / "two" / name)),
                                      np.asarray(read(tmp_path / "one" / name)))
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["slab_scores"] == one["slab_scores"] and two["processes"] == 2
    assert not (tmp_path / "two" / ".partial").exists()
