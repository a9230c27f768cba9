"""launch/calibrate.py on a synthetic held-out set whose errors follow the predicted std."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import tifffile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_calibrate_command_finds_interval_scale_and_threshold(tmp_path):
    rng = np.random.default_rng(0)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    images = []
    for i in range(6):
        mean = rng.uniform(0.3, 0.7, (64, 64)).astype(np.float32)
        # Per 16-px block std: half the blocks certain (0.01), half uncertain (0.08).
        std = np.kron(rng.choice([0.01, 0.08], (4, 4)), np.ones((16, 16))).astype(np.float32)
        target = (mean + std * rng.standard_normal(mean.shape)).astype(np.float32)
        tifffile.imwrite(pred / f"im{i}_mean.tif", mean)
        tifffile.imwrite(pred / f"im{i}_std.tif", std)
        tifffile.imwrite(gt / f"im{i}.tif", target)
        images.append({"name": f"im{i}", "score": float(std.mean()),
                       "normalization": {"mode": "minmax", "lo": 0.0, "hi": 1.0, "dtype": "<f4", "clip": False}})
    (pred / "report.json").write_text(json.dumps({"images": images}))
    out = tmp_path / "cal"
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "calibrate.py"), f"--predictions={pred}", f"--target={gt}",
         f"--output={out}", "--block=16", "--tolerance=0.03", "--alpha=0.2"],
        capture_output=True, text=True, timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["unit"] == "block" and cal["num_units"] == 96  # 6 images: too few to be units themselves
    assert "blocks of the same images are not" in result.stderr and "approximate" in cal["independence"]
    # Gaussian errors: a 20 % two-sided miss rate needs lambda >= 1.28.
    assert 1.2 < cal["intervals"]["lambda"] < 2.0 and cal["intervals"]["upper_bound"] <= 0.2
    # Block MAE is ~0.8 std: 0.008 (certain) vs 0.064 (uncertain); the score threshold lies between.
    assert 0.01 < cal["threshold"]["threshold"] < 0.08 and cal["threshold"]["auc"] == 1.0
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_predictions(folder, gt_folder, n, shape, rng, lo=1000.0, hi=3000.0):
    """n predictions written in 16-bit target units with the contract's target map [lo, hi]."""
    folder.mkdir(), gt_folder.mkdir()
    mapping = {"version": 1, "input": {"mode": "percentile", "lo": 0.0, "hi": 255.0, "dtype": "|u1", "clip": True},
               "target": {"mode": "percentile", "lo": lo, "hi": hi, "dtype": "<u2", "clip": True}}
    images = []
    for i in range(n):
        unit = rng.uniform(0.2, 0.8, shape)
        tifffile.imwrite(folder / f"im{i}_mean.tif", np.rint(lo + unit * (hi - lo)).astype(np.uint16))
        tifffile.imwrite(folder / f"im{i}_std.tif", np.full(shape, 0.05, np.float32))
        tifffile.imwrite(gt_folder / f"im{i}.tif", np.rint(lo + (unit + 0.01) * (hi - lo)).astype(np.uint16))
        images.append({"name": f"im{i}", "score": 0.05, "intensity": mapping})
    (folder / "report.json").write_text(json.dumps({"images": images}))


def test_twenty_images_are_whole_calibration_units_in_the_target_units_of_the_contract(tmp_path):
    from emdiffuse_jax import restore

    _write_predictions(tmp_path / "pred", tmp_path / "gt", 20, (24, 24), np.random.default_rng(1))
    mean, std, target, unit = restore.load_calibration_units(tmp_path / "pred", tmp_path / "gt", log=print)
    assert unit == "image" and mean.shape == (20, 24, 24)
    # both read with the contract's target map: the 0.01 offset comes back in [0, 1] units
    np.testing.assert_allclose((target - mean).mean(), 0.01, atol=1e-3)
    assert 0.199 <= mean.min() and mean.max() <= 0.801  # not the 16-bit values, not a per-image stretch
    _, _, _, unit = restore.load_calibration_units(tmp_path / "pred", tmp_path / "gt", "block", 8, log=print)
    assert unit == "block"
