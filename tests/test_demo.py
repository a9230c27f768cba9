"""The README's demo (launch/demo.py) end to end, on a shortened schedule."""

import json

import numpy as np
import pytest

from emdiffuse_jax.data import io
from emdiffuse_jax.demo import run_demo


def test_demo_trains_restores_and_reports(tmp_path):
    summary = run_demo(tmp_path, steps=20, num_samples=2, sampler_steps=3, image_size=96, log=lambda _: None)
    output = tmp_path / "demo_output"
    for name in ("noisy_mean.tif", "noisy_std.tif", "noisy_reliability.tif", "noisy_mean.png", "report.json"):
        assert (output / name).is_file(), name
    mean = io.read_image(output / "noisy_mean.tif")
    assert mean.shape == (96, 96) and mean.dtype == np.uint8
    assert np.isfinite(summary["psnr_restored_db"]) and summary["uncertainty_score"] > 0
    assert json.loads((tmp_path / "demo_summary.json").read_text()) == summary

    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}
    logs = []
    assert run_demo(tmp_path, steps=20, num_samples=2, sampler_steps=3, image_size=96, log=logs.append) == summary
    assert any("already holds this finished prediction" in m for m in logs)   # the README's "a rerun resumes"
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir()} == before


@pytest.mark.parametrize("kwargs, message", [({"num_samples": 0}, "num_samples >= 1"),
                                             ({"sampler_steps": 1}, "at least 2 steps"),
                                             ({"sampler": "euler"}, "unknown sampler")])
def test_demo_rejects_bad_settings_before_training(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_demo(tmp_path / "demo", steps=20, log=lambda _: None, **kwargs)
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_with_its_defaults_restores_better_than_the_noisy_input(tmp_path):
    """The README's promise: the default demo (600 steps, K = 4, DDIM 20, 256 px) improves PSNR by > 2 dB."""
    summary = run_demo(tmp_path, log=lambda _: None)
    assert summary["psnr_restored_db"] > summary["psnr_noisy_db"] + 2.0, summary


def test_demo_program_trains_from_the_documented_seed():
    from emdiffuse_jax.demo import DEFAULT_SEED
    from emdiffuse_jax.programs import demo as program

    assert program._SEED.default == DEFAULT_SEED
