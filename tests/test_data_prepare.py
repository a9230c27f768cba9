"""Prepared datasets: launch/prepare.py and prepare_dataset write TFDS array_record that the pipeline
reads back without TensorFlow; registration rejections are counted with reasons; inputs untouched."""

import hashlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import shared_path
from scipy import ndimage

from emdiffuse_jax.data import io
from emdiffuse_jax.data.degrade import downsample2
from emdiffuse_jax.data.phantom import phantom
from emdiffuse_jax.data.pipeline import build_train_source
from emdiffuse_jax.data.prepare import prepare_dataset
from emdiffuse_jax.data.tfds_builder import decode_example, open_prepared
from emdiffuse_jax.data.tiling import axis_origins

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fingerprints(folder):
    return {p: (os.stat(p).st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def test_denoise_from_real_clean_slices_covers_every_pixel_and_reads_back(tmp_path):
    stack = io.read_volume(shared_path("data", "fibsem-medulla-250.tif"), lazy=True)
    raw = tmp_path / "raw"
    raw.mkdir()
    for z in range(3):
        tifffile.imwrite(raw / f"{z}.tif", stack[z * 50, :150, :130])
    before = _fingerprints(raw)
    summary = prepare_dataset("denoise", raw, output=tmp_path / "out", patch_size=64, overlap=16,
                              val_fraction=0.34, degrade="poisson:dose=8", show_progress=False)
    per_image = len(axis_origins(150, 64, 16)) * len(axis_origins(130, 64, 16))
    assert summary.counts["train"] + sum(summary.rejected.values()) == 2 * per_image
    assert summary.counts["validation"] == per_image
    assert _fingerprints(raw) == before
    ds, meta = open_prepared(summary.path, "train")
    ex = ds[0]
    assert ex["cond"].dtype == np.uint8 and ex["target"].shape == (64, 64, 1) and meta["task"] == "denoise"
    cond, target = decode_example(ex, "denoise")
    assert np.abs(cond - target).mean() > 0.05  # noisy input, clean target
    src = build_train_source("denoise", summary.path.parent.parent, patch_size=64)
    assert src.num_examples == summary.counts["train"]
    a, b = src.batch(3, 2, 0, 1, 4), src.batch(3, 2, 1, 2, 4)
    assert np.array_equal(a["cond"][2:], b["cond"]) and a["cond"].shape == (4, 64, 64, 1)


def test_superres_pairs_are_registered_and_bad_pairs_rejected_with_reason(tmp_path):
    raw = tmp_path / "raw"
    img, gt = raw / "img", raw / "gt"
    img.mkdir(parents=True), gt.mkdir()
    for i, seed in enumerate((11, 12)):
        high = phantom((192, 192), seed=seed)
        moved = ndimage.shift(high.astype(float), (3.0, -2.0), mode="reflect")
        tifffile.imwrite(gt / f"{i}.tif", high)
        low = downsample2(moved) if i == 0 else downsample2(phantom((192, 192), seed=99).astype(float))
        tifffile.imwrite(img / f"{i}.tif", np.clip(np.rint(low), 0, 255).astype(np.uint8))
    before = _fingerprints(raw)
    summary = prepare_dataset("superres", raw, output=tmp_path / "out", patch_size=64, overlap=0,
                              val_fraction=0, show_progress=False)
    assert summary.counts["train"] >= 4
    assert any(reason.startswith("pair not registered") for reason in summary.rejected)
    assert _fingerprints(raw) == before
    ds, _ = open_prepared(summary.path, "train")
    cond, target = decode_example(ds[0], "superres")
    assert ds[0]["cond"].shape == (32, 32, 1) and cond.shape == (64, 64, 1)
    assert np.corrcoef(cond.ravel(), target.ravel())[0, 1] > 0.7  # aligned after registration


def test_vem_i_from_16_bit_zarr_keeps_16_bit_and_its_bounds(tmp_path):
    vol = (phantom((14, 48, 48), seed=4).astype(np.uint16) * 200 + 1000)
    io.write_zarr(tmp_path / "v.zarr", vol)
    summary = prepare_dataset("vem_i", tmp_path / "v.zarr", output=tmp_path / "out", patch_size=32,
                              z_factor=3, normalization="minmax", val_fraction=0.3, overlap=16,
                              show_progress=False)
    ds, meta = open_prepared(summary.path, "train")
    ex = ds[0]
    assert ex["cond"].dtype == np.uint16 and ex["target"].shape == (32, 32, 2) and meta["channels"] == [2, 2]
    assert ex["target_lo"] == vol.min() and ex["target_hi"] == vol.max()
    assert summary.counts["validation"] > 0
    src = build_train_source("vem_i", tmp_path / "out", patch_size=32, z_factor=3, split="validation")
    assert src.batch(0, 0, 0, 1, 2)["cond"].shape == (2, 32, 32, 2)


def test_vem_a_from_real_sstem_stack_with_fewer_slices_than_the_patch(tmp_path):
    summary = prepare_dataset("vem_a", shared_path("data", "sstem-vnc-30.tif"), output=tmp_path / "out",
                              patch_size=64, z_factor=4, z_stride=64, overlap=0, show_progress=False)
    ds, _ = open_prepared(summary.path, "train")
    assert len(ds) == summary.counts["train"] > 0 and ds[0]["cond"].shape == (64, 64, 2)


def test_existing_dataset_and_wrong_task_or_patch_size_are_refused(tmp_path):
    prepare_dataset("denoise", output=tmp_path / "out", patch_size=32, show_progress=False)
    with pytest.raises(io.DataError, match="already holds a prepared dataset"):
        prepare_dataset("denoise", output=tmp_path / "out", patch_size=32, show_progress=False)
    with pytest.raises(io.DataError, match="prepared for task 'denoise'"):
        build_train_source("superres", tmp_path / "out", patch_size=32)
    with pytest.raises(io.DataError, match="patch size 32, not 64"):
        build_train_source("denoise", tmp_path / "out", patch_size=64)


def test_prepare_script_shows_progress_and_summary(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "launch" / "prepare.py"), "--task=superres",
                          f"--output={tmp_path / 'out'}", "--patch_size=32"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "superres [" in run.stderr and "/s" in run.stderr
    assert "examples: train" in run.stdout and "rejected: 0" in run.stdout
    # The closing hint is a real `emdiffuse train` command line for this dataset (flags train.py knows).
    assert re.search(r"^train with: emdiffuse train --config=emdiffuse_r --workdir=runs/superres "
                     r"--config\.data\.input_path=\S+ --config\.data\.patch_size=32$", run.stdout, re.M), run.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "launch" / "prepare.py"), "--task=denoise",
                          f"--input={tmp_path / 'missing'}", f"--output={tmp_path / 'o2'}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "missing: no such file or folder" in bad.stderr


def test_a_split_left_empty_by_rejections_is_an_error_with_the_reasons(tmp_path):
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True), (raw / "gt").mkdir()
    tifffile.imwrite(raw / "gt" / "a.tif", phantom((128, 128), seed=1))
    tifffile.imwrite(raw / "img" / "a.tif", phantom((128, 128), seed=2))  # different content
    with pytest.raises(io.DataError, match="no usable patches for the train split.*pair not registered"):
        prepare_dataset("denoise", raw, output=tmp_path / "out", patch_size=64, val_fraction=0,
                        show_progress=False)
    assert not list((tmp_path / "out").rglob("*.array_record*"))
