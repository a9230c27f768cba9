"""Prediction shared by two processes (jax.distributed on 127.0.0.1, two CPU devices each): each takes its
slabs or images, all write into one output folder, and the result equals a single-process run."""

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


def _run(kind, source, output, processes, fmt="tiff"):
    """tests/multihost_predict_worker.py as processes 0 .. processes-1 of one run; their printed lines."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "SLURM_", "TPU_"))},
           "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2", "PYTHONPATH": str(TESTS.parent)}
    workers = [subprocess.Popen([sys.executable, str(TESTS / "multihost_predict_worker.py"), f"127.0.0.1:{port}",
                                 str(processes), str(i), kind, str(source), str(output), fmt],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(processes)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * processes, "\n".join(o[-2000:] for o in outputs)
    return outputs


def _without_timings(entries):
    return [{k: v for k, v in e.items() if "seconds" not in k} for e in entries]


@pytest.mark.parametrize("fmt,names", [("tiff", ("mean.tif", "std.tif")),
                                       pytest.param("ome-zarr", ("mean.zarr", "std.zarr"), marks=pytest.mark.slow)])
def test_two_processes_split_the_slabs_and_write_the_single_process_volume(tmp_path, fmt, names):
    slices = np.stack([np.full((40, 36), v, np.uint8) for v in (30, 90, 150, 210, 120)])
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, slices, photometric="minisblack")
    _run("volume", stack, tmp_path / "one", 1, fmt)
    logs = _run("volume", stack, tmp_path / "two", 2, fmt)
    assert "process 0 of 2: 2 slabs" in logs[0] and "process 1 of 2: 2 slabs" in logs[1]
    for name in names:
        read = (lambda p: zarr.open_array(store=str(p / "0"), mode="r")[:]) if fmt == "ome-zarr" else io.read_volume
        one, two = np.asarray(read(tmp_path / "one" / name)), np.asarray(read(tmp_path / "two" / name))
        np.testing.assert_array_equal(two, one)
        assert name.startswith("mean") or one[1].max() > 0   # the samples differ: std is not trivially zero
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["slab_scores"] == one["slab_scores"] and two["processes"] == 2
    assert not (tmp_path / "two" / ".partial").exists()


@pytest.mark.parametrize("layout", ["stack", pytest.param("folder", marks=pytest.mark.slow)])
def test_two_processes_split_the_images_of_a_stack_or_folder(tmp_path, layout):
    """Three images over two processes (2 + 1): the same files (a stack's slices assembled by process 0)
    and report entries as one process."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, 40, 36), dtype=np.uint8)
    if layout == "stack":
        source, stems = tmp_path / "stack.tif", ["stack"]
        tifffile.imwrite(source, pixels, photometric="minisblack")
    else:
        source, stems = tmp_path / "images", [f"img{i}" for i in range(3)]
        source.mkdir()
        for stem, image in zip(stems, pixels):
            tifffile.imwrite(source / f"{stem}.tif", image)
    one, two = tmp_path / "one", tmp_path / "two"
    _run("images", source, one, 1)
    _run("images", source, two, 2)
    for name in (f"{stem}_{kind}.tif" for stem in stems for kind in ("mean", "std", "reliability")):
        np.testing.assert_array_equal(tifffile.imread(two / name), tifffile.imread(one / name))
    report_one, report_two = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert len(report_two["images"]) == 3
    assert _without_timings(report_two["images"]) == _without_timings(report_one["images"])
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())   # nothing left over
