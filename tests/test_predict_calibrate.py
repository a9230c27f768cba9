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
    assert cal["blocks"] == 96
    # Gaussian errors: a 20 % two-sided miss rate needs lambda >= 1.28.
    assert 1.2 < cal["intervals"]["lambda"] < 2.0 and cal["intervals"]["upper_bound"] <= 0.2
    # Block MAE is ~0.8 std: 0.008 (certain) vs 0.064 (uncertain); the score threshold lies between.
    assert 0.01 < cal["threshold"]["threshold"] < 0.08 and cal["threshold"]["auc"] == 1.0
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
