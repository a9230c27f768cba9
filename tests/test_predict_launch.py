"""launch/predict.py and the file-level restoration: every output, wrong checkpoints, inputs left intact."""

import json
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import tifffile

from emdiffuse_jax import checkpointing, inference, models, restore

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(in_channel=2, out_channel=1, inner_channel=16, channel_mults=(1, 2), attn_res=(), num_head_channels=16,
            res_blocks=1, dropout=0.0, image_size=32, vem=False, zero_init=False)


def save_checkpoint(workdir, task, unet_values, z_factor=None):
    unet = models.unet_config(unet_values)
    params = models.init_params(unet, jax.random.key(0))
    ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
    meta = {**checkpointing.model_identity(task, unet), "z_factor": z_factor, "step": 1}
    ckpt.save(1, {"params": params, "ema_params": params}, meta, force=True)
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def denoise_ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "denoise", "denoise", TINY)


@pytest.fixture()
def image16(tmp_path):
    yy, xx = np.mgrid[:40, :52]
    img = (20000 + 10000 * np.sin(yy / 5.0) * np.cos(xx / 7.0)).astype(np.uint16)
    path = tmp_path / "cell.tif"
    tifffile.imwrite(path, img)
    return path, img


def test_predict_command_writes_every_output(denoise_ckpt, image16, tmp_path):
    path, img = image16
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "launch" / "predict.py"), "--task=denoise", f"--checkpoint={denoise_ckpt}",
           f"--input={path}", f"--output={out}", "--num_samples=2", "--sampler=dpm", "--steps=3", "--seed=1",
           "--tile=32", "--overlap=8", "--save_samples"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not re.search(r"^[IW]\d{4} |INFO:absl|orbax", result.stderr, re.M), result.stderr  # no library noise
    mean = tifffile.imread(out / "cell_mean.tif")
    std = tifffile.imread(out / "cell_std.tif")
    assert mean.shape == img.shape and mean.dtype == np.uint16
    assert std.dtype == np.float32 and std.shape == img.shape and std.max() > 0
    assert tifffile.imread(out / "cell_samples.tif").shape == (2,) + img.shape
    for name in ("input", "mean", "std", "reliability"):
        assert (out / f"cell_{name}.png").stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    entry = report["images"][0]
    assert entry["score"] == pytest.approx(float(std.mean()), rel=1e-4)
    assert entry["reliable"] == (entry["score"] <= 0.12) and entry["threshold"] == 0.12
    assert np.asarray(entry["tile_scores"]).shape == (2, 2)
    assert report["settings"]["sampler"]["name"] == "dpm" and report["settings"]["sampler"]["steps"] == 3
    assert not list(out.glob(".*"))  # no temporary files left behind
    np.testing.assert_array_equal(tifffile.imread(path), img)


def test_checkpoint_of_another_task_is_refused(denoise_ckpt):
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="superres"):
        checkpointing.load_model(denoise_ckpt, task="superres")


def test_restore_refuses_to_write_into_the_input(denoise_ckpt, image16):
    path, _ = image16
    loaded = checkpointing.load_model(denoise_ckpt, task="denoise")
    restorer = restore.make_restorer(loaded, inference.SamplerSpec("ddim", 2))
    with pytest.raises(ValueError, match="overlaps the input"):
        restore.restore_files(restorer, path.parent, path.parent / "out", task="denoise", tile=32, overlap=8)
    with pytest.raises(ValueError, match="num_samples"):
        restore.restore_files(restorer, path, path.parent / "o2", task="denoise", num_samples=0)


def test_stack_inputs_are_split_into_images(tmp_path):
    stack = np.zeros((3, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    names = [name for name, _ in restore.list_inputs(tmp_path / "s.tif")]
    assert names == ["s_z0000", "s_z0001", "s_z0002"]


def test_isotropic_command_builds_the_volume_and_refuses_a_2d_model(denoise_ckpt, tmp_path):
    vem_ckpt = save_checkpoint(tmp_path / "vem", "vem_i", {**TINY, "in_channel": 3, "vem": True}, z_factor=2)
    stack = np.stack([np.full((24, 20), v, np.uint8) for v in (40, 120, 200)])
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="minisblack")
    base = [sys.executable, str(ROOT / "launch" / "isotropic.py"), f"--input={tmp_path / 'vol.tif'}", "--z_factor=2",
            "--num_samples=2", "--sampler=ddim", "--steps=2", "--tile=16", "--overlap=4"]
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    bad = subprocess.run(base + [f"--checkpoint={denoise_ckpt}", f"--output={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert bad.returncode != 0 and "launch/predict.py" in bad.stderr + bad.stdout
    ok = subprocess.run(base + [f"--checkpoint={vem_ckpt}", f"--output={tmp_path / 'iso'}", "--voxel_size=50,4,4"],
                        capture_output=True, text=True, timeout=600, env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert not re.search(r"^[IW]\d{4} |INFO:absl|orbax", ok.stderr, re.M), ok.stderr  # no library noise
    with tifffile.TiffFile(tmp_path / "iso" / "mean.tif") as tif:   # a stack in, a stack out, with its scale
        assert tif.series[0].shape == (5, 24, 20) and tif.imagej_metadata["spacing"] == pytest.approx(25.0)
    report = json.loads((tmp_path / "iso" / "report.json").read_text())
    assert report["output_shape"] == [5, 24, 20] and len(report["slab_scores"]) == 2


def test_defaults_come_from_the_checkpoint_patch_size_and_training_schedule(tmp_path):
    from emdiffuse_jax.diffusion import samplers

    schedule = dict(kind="linear", n_timestep=500, linear_start=1e-5, linear_end=0.02)
    workdir = tmp_path / "ckpt"
    unet = models.unet_config(TINY)
    params = models.init_params(unet, jax.random.key(0))
    ckpt = checkpointing.Checkpointer(workdir, every_steps=1)
    meta = {**checkpointing.model_identity("denoise", unet), "z_factor": None, "step": 1, "patch_size": 16,
            "config": {"diffusion": {"train_schedule": schedule}}}
    ckpt.save(1, {"params": params, "ema_params": params}, meta, force=True)
    ckpt.close()
    loaded = checkpointing.load_model(workdir, task="denoise")
    restorer = restore.make_restorer(loaded, inference.SamplerSpec("dpm", 4))
    assert restorer.resolve_tiling(None, None) == (16, 4)
    spec = restore.spec_for_checkpoint(inference.SamplerSpec("dpm", 4), loaded)
    assert dict(spec.train_schedule) == schedule and spec.to_dict()["train_schedule"] == schedule
    floor = samplers.min_trained_gamma(schedule)
    assert floor > 10 * samplers.min_trained_gamma()  # this schedule stops at a much higher noise level
    assert inference.noise_grid(spec)[0] == pytest.approx(floor)  # the DPM grid starts at this model's floor
    assert inference.noise_grid(inference.SamplerSpec("dpm", 4))[0] == pytest.approx(samplers.min_trained_gamma())
    # A published .pth carries no record: the network's 256 px image size.
    torch_like = checkpointing.LoadedModel(models.unet_config({**TINY, "image_size": 256}), params, "denoise",
                                           {"source": "torch"})
    assert restore.model_patch_size(torch_like) == 256
    assert restore.train_schedule(torch_like) == samplers.TRAIN_SCHEDULE


def test_predict_command_uses_the_model_patch_size_and_refuses_a_bad_overlap(denoise_ckpt, image16, tmp_path):
    path, _ = image16
    base = [sys.executable, str(ROOT / "launch" / "predict.py"), "--task=denoise", f"--checkpoint={denoise_ckpt}",
            f"--input={path}", "--num_samples=2", "--sampler=ddim", "--steps=2"]
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    bad = subprocess.run(base + [f"--output={tmp_path / 'bad'}", "--overlap=16"], capture_output=True, text=True,
                         timeout=600, env=env)
    assert bad.returncode != 0 and "less than half the tile (32 px)" in bad.stderr
    ok = subprocess.run(base + [f"--output={tmp_path / 'ok'}"], capture_output=True, text=True, timeout=600, env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    settings = json.loads((tmp_path / "ok" / "report.json").read_text())["settings"]
    assert (settings["tile"], settings["overlap"], settings["tiling"]) == (32, 8, "joint")
    assert "memory plan:" in ok.stderr and "ETA" in ok.stdout + ok.stderr


def test_a_stack_in_gives_stacks_out_with_the_pixel_size_and_calibrates(denoise_ckpt, tmp_path):
    from emdiffuse_jax.data import io

    yy, xx = np.mgrid[:40, :52]
    stack = np.stack([(20000 + 8000 * np.sin(yy / (4.0 + z)) * np.cos(xx / 6.0)).astype(np.uint16) for z in range(3)])
    path = io.write_tiff(tmp_path / "s.tif", stack, voxel_size=(30.0, 5.0, 5.0))
    restorer = restore.make_restorer(checkpointing.load_model(denoise_ckpt, task="denoise"),
                                     inference.SamplerSpec("ddim", 2))
    out = tmp_path / "out"
    report = restore.restore_files(restorer, path, out, task="denoise", num_samples=2, tile=32, overlap=8,
                                   log=lambda _: None)
    for kind, dtype in (("mean", np.uint16), ("std", np.float32), ("reliability", np.float32)):
        with tifffile.TiffFile(out / f"s_{kind}.tif") as tif:   # one multi-page TIFF per output, Fiji's scale
            assert tif.series[0].shape == (3, 40, 52) and tif.series[0].dtype == dtype
            assert tif.imagej_metadata["spacing"] == pytest.approx(30.0) and tif.imagej_metadata["unit"] == "nm"
            assert tif.pages[0].tags["XResolution"].value == (1, 5)
    assert not list(out.glob("s_z*_mean.tif")) and not list(out.glob(".*"))   # no per-slice files left over
    assert [e["name"] for e in report["images"]] == ["s_z0000", "s_z0001", "s_z0002"]
    assert report["images"][1]["voxel_size_nm"]["output"] == [30.0, 5.0, 5.0]
    mean, std, target, unit = restore.load_calibration_units(out, path, "block", 16, log=lambda _: None)  # pages
    assert mean.shape == std.shape == target.shape == (3 * 2 * 3, 16, 16)
    # Super-resolution halves the pixel size; an explicit voxel size overrides the (absent) metadata.
    tifffile.imwrite(tmp_path / "lr.tif", stack[0])
    restore.restore_files(restorer, tmp_path / "lr.tif", tmp_path / "sr", task="superres", num_samples=1, tile=32,
                          overlap=8, voxel_size=(8.0, 8.0), log=lambda _: None)
    assert io.read_voxel_size(tmp_path / "sr" / "lr_mean.tif") == pytest.approx((4.0, 4.0))
    assert tifffile.imread(tmp_path / "sr" / "lr_mean.tif").shape == (80, 104)
