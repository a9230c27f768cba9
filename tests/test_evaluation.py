"""Evaluation measures on synthetic cases with known answers, and launch/evaluate.py end to end."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from emdiffuse_jax.evaluation import blocks, compare, fourier

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _white(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


def _lowpass(x, cutoff):
    """x with all spatial frequencies above `cutoff` (cycles per pixel) removed."""
    fy, fx = np.fft.fftfreq(x.shape[-2])[:, None], np.fft.fftfreq(x.shape[-1])[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(x) * (np.hypot(fy, fx) < cutoff)))


def test_frc_of_an_image_with_itself_is_one_up_to_nyquist():
    s = _white((2, 96, 96), 0)
    result = fourier.frc(s, s)
    np.testing.assert_allclose(result.frc[1:], 1.0, atol=1e-9)
    assert not result.crossed and result.resolution_px == 2.0
    assert result.resolution_nm(10.0) == 20.0


def test_frc_of_independent_white_noise_falls_below_threshold_at_once():
    result = fourier.frc(_white((4, 128, 128), 0), _white((4, 128, 128), 1))
    assert result.crossed and result.resolution_px > 20     # no common detail at any scale
    assert abs(result.frc[2:].mean()) < 0.02


@pytest.mark.parametrize("snr", [0.25, 1.0, 4.0])
def test_frc_against_noisy_copy_matches_the_snr(snr):
    """FRC(s, s + n) = 1 / sqrt(1 + 1/SNR) for white signal and noise; two noisy copies: SNR / (1 + SNR)."""
    s = _white((4, 128, 128), 0)
    n1, n2 = _white(s.shape, 1) / np.sqrt(snr), _white(s.shape, 2) / np.sqrt(snr)
    _, curve = fourier.frc_curve(s, s + n1)
    np.testing.assert_allclose(curve[4:].mean(), 1 / np.sqrt(1 + 1 / snr), atol=0.02)
    _, curve = fourier.frc_curve(s + n1, s + n2)
    np.testing.assert_allclose(curve[4:].mean(), snr / (1 + snr), atol=0.02)


def test_frc_resolution_of_a_band_limited_image_is_its_cutoff():
    s = _lowpass(_white((2, 128, 128), 0), 0.2)
    result = fourier.frc(s, s + 0.2 * _white(s.shape, 1))
    assert result.crossed
    np.testing.assert_allclose(result.resolution_px, 1 / 0.2, rtol=0.1)


def test_axial_cone_sees_blur_along_the_first_axis_that_whole_rings_hide():
    from scipy import ndimage

    s = _white((2, 96, 96), 0)
    # blurred along z of (N, Z, X) views only, plus a little noise (FRC ignores a noise-free linear filter)
    blurred = ndimage.gaussian_filter1d(s, 2.0, axis=1) + 0.05 * _white(s.shape, 1)
    whole, axial = fourier.frc(s, blurred), fourier.frc(s, blurred, cone="axial")
    assert axial.crossed and axial.resolution_px > 2.5 and not whole.crossed
    assert fourier.band_power_ratio(blurred, s, cone="axial") < 0.01 < fourier.band_power_ratio(blurred, s)


def test_high_frequency_power_ratio_sees_lost_and_added_detail():
    s = _white((2, 96, 96), 0)
    assert fourier.band_power_ratio(_lowpass(s, 0.2), s) < 1e-6      # regression-like: detail gone
    np.testing.assert_allclose(fourier.band_power_ratio(s, s), 1.0)
    np.testing.assert_allclose(fourier.band_power_ratio(2 * s, s), 4.0)


def test_auc_of_perfect_reversed_and_random_scores():
    errors = np.random.default_rng(0).uniform(size=2000)
    perfect = blocks.score_error_stats(errors, errors, block=8)
    assert perfect.auc_worst == 1.0 and perfect.spearman == pytest.approx(1.0) and perfect.num_worst == 200
    assert blocks.score_error_stats(-errors, errors, block=8).auc_worst == 0.0
    random = blocks.score_error_stats(np.random.default_rng(1).uniform(size=2000), errors, block=8)
    assert abs(random.auc_worst - 0.5) < 0.05 and abs(random.spearman) < 0.06


def test_roc_auc_counts_ties_half():
    assert blocks.roc_auc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert blocks.roc_auc([0, 1, 2, 3], [False, False, True, True]) == 1.0
    with pytest.raises(ValueError, match="positives and negatives"):
        blocks.roc_auc([1, 2], [True, True])


def test_block_scores_average_each_square_and_drop_the_border():
    pred = np.zeros((1, 10, 12))
    truth = np.zeros_like(pred)
    truth[0, :4, 4:8] = 1.0                               # the error lives in block (0, 1)
    std = np.arange(10 * 12, dtype=float).reshape(pred.shape)
    scores, errors = blocks.block_scores_errors(pred, truth, std, block=4)
    assert scores.shape == errors.shape == (2 * 3,)      # two rows of 4 px (2 dropped), three columns
    np.testing.assert_allclose(errors, [0, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(scores[0], std[0, :4, :4].mean())


def test_psnr_of_a_known_offset_and_generated_slices_only():
    """8-bit volume, z_factor 4: a prediction 10 grey levels off everywhere has PSNR 20 log10(255 / 10)."""
    rng = np.random.default_rng(0)
    truth = rng.integers(20, 200, (9, 48, 48)).astype(np.uint8)
    offset = (truth.astype(np.int16) + 10).astype(np.uint8)
    offset[::4] = truth[::4] + 100          # input slices: never scored with z_factor
    report = compare.evaluate(truth, {"exact": truth, "offset": offset}, z_factor=4)
    exact, off = report["rows"]
    assert exact["images"] == off["images"] == 6
    assert exact["psnr"] > 100 and exact["ssim"] == pytest.approx(1.0) and exact["mae"] == 0.0
    np.testing.assert_allclose(off["psnr"], 20 * np.log10(255 / 10), rtol=1e-5)
    np.testing.assert_allclose(off["mae"], 10 / 255, rtol=1e-6)
    assert set(off["psnr_by_distance"]) == {1, 2}
    assert report["settings"]["data_range"] == [0.0, 255.0]


def test_a_stack_of_2d_images_gets_no_axial_measures():
    truth = np.random.default_rng(0).integers(0, 255, (10, 32, 32)).astype(np.uint8)
    row = compare.evaluate(truth, {"p": truth})["rows"][0]
    assert row["images"] == 10 and "frc_xz" not in row and "psnr_by_distance" not in row


def test_input_slices_kept_is_checked_without_ground_truth():
    truth = np.random.default_rng(0).integers(0, 200, (9, 16, 16)).astype(np.uint8)
    changed = truth.copy()
    changed[4] += 7                                    # an input slice (4 = 1 * Z) was altered
    report = compare.evaluate(truth, {"kept": truth, "changed": changed}, inputs=truth[::4], z_factor=4)
    assert [r["input_max_abs_diff"] for r in report["rows"]] == [0.0, 7.0]
    assert "input kept (max diff)" in compare.markdown_table(report)
    with pytest.raises(ValueError, match="give the input the reconstruction was made from"):
        compare.evaluate(truth, {"kept": truth}, inputs=truth[::2], z_factor=4)


def test_z_factor_must_fit_the_depth():
    truth = np.zeros((10, 16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"\(N - 1\) \* 4 \+ 1"):
        compare.evaluate(truth, {"p": truth}, z_factor=4)


def _write_case(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(30, 220, (9, 64, 64)).astype(np.uint8)
    error = np.zeros(truth.shape, np.float32)
    error[:, :32, :32] = 12.0                       # one quadrant of every slice is off
    pred = np.clip(truth + error, 0, 255).astype(np.uint8)
    std = (0.01 + error / 255).astype(np.float32)   # the std points at that quadrant
    for name, arr in (("truth", truth), ("pred", pred), ("std", std)):
        tifffile.imwrite(tmp_path / f"{name}.tif", arr)
    return truth, pred


def _evaluate(tmp_path, *args):
    cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), f"--truth={tmp_path / 'truth.tif'}",
           f"--output={tmp_path / 'out'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def test_evaluate_command_writes_tables_and_plots(tmp_path):
    _write_case(tmp_path)
    result = _evaluate(tmp_path, f"--prediction=model={tmp_path / 'pred.tif'}", f"--std=model={tmp_path / 'std.tif'}",
                       f"--prediction=truth_copy={tmp_path / 'truth.tif'}", "--z_factor=4",
                       "--voxel_size=10,10,10", "--block=16", "--worst_fraction=0.25")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    model, copy = report["rows"]
    assert model["score_error"]["auc_worst"] == 1.0 and model["score_error"]["num_blocks"] == 6 * 16
    np.testing.assert_allclose(model["mae"], 12 / 255 / 4, rtol=1e-6)
    assert copy["frc_xy"] == {"px": 2.0, "nm": 20.0, "crossed": False}
    xz = copy["frc_xz"]     # XZ views are 9 px deep: the highest ring there is 4/9 cycles per pixel
    assert not xz["crossed"] and xz["px"] == pytest.approx(9 / 4) and xz["nm"] == pytest.approx(22.5)
    assert "score_error" not in copy
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert "| model |" in table and "AUC worst 25%" in table and "<= 2.00 px / <= 20.0 nm" in table
    for png in ("frc.png", "spectrum.png", "score_vs_error.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_command_names_the_mismatching_file(tmp_path):
    _write_case(tmp_path)
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((9, 32, 32), np.uint8))
    result = _evaluate(tmp_path, f"--prediction=model={tmp_path / 'small.tif'}")
    assert result.returncode == 1
    assert "small.tif" in result.stderr and "crop" in result.stderr
    result = _evaluate(tmp_path, f"--prediction={tmp_path / 'pred.tif'}")
    assert result.returncode == 2 and "NAME=PATH" in result.stderr   # a usage error (cli.USAGE_EXIT_CODE)
    assert not (tmp_path / "out").exists()
