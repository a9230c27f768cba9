"""Isotropic reconstruction: slice interleaving, resume without recomputation, atomic outputs, bad inputs."""

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from conftest import shared_path
from emdiffuse_jax import inference, run_state, volume
from emdiffuse_jax.data import io
from emdiffuse_jax.diffusion import samplers

GAMMAS = np.linspace(0.05, 0.999, 3)
Z = 3


def blend_apply(params, x, gamma, slice_index):
    """Clean estimate = linear blend of [later, earlier] at depth (c + 1) / Z, plus a little sample noise."""
    w = (slice_index.astype(jnp.float32)[:, None, None, None] + 1.0) / Z
    target = w * x[..., :1] + (1 - w) * x[..., 1:2]
    g = gamma[:, None, None, None]
    return (x[..., -1:] - jnp.sqrt(g) * target) / jnp.sqrt(1.0 - g) * params["scale"]


def ddim(denoise, cond, key, slice_index):
    return samplers.ddim_sample(denoise, cond, key, GAMMAS, eta=1.0, slice_index=slice_index)


def make_restorer(scale=1.0):
    return inference.Restorer(blend_apply, {"scale": jnp.float32(scale)}, ddim, batch_per_device=2)


@pytest.fixture()
def stack(tmp_path):
    slices = np.stack([np.full((40, 36), v, np.uint8) for v in (30, 90, 150, 210)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, slices, photometric="minisblack")
    return path, slices


def test_isotropic_depth():
    assert volume.isotropic_depth(4, 3) == 10 and volume.isotropic_depth(2, 6) == 7


def test_volume_interleaves_originals_and_generated_slices(stack, tmp_path):
    path, slices = stack
    report = volume.reconstruct(make_restorer(), path, tmp_path / "out", Z, num_samples=2, tile=32, overlap=8,
                                log=lambda s: None)
    mean = io.read_volume(tmp_path / "out" / "mean.tif")   # one multi-page TIFF per output
    std = io.read_volume(tmp_path / "out" / "std.tif")
    assert mean.shape == (10, 40, 36) and mean.dtype == np.uint8 and std.dtype == np.float32
    np.testing.assert_array_equal(mean[::Z], slices)
    expected = np.array([30, 50, 70, 90, 110, 130, 150, 170, 190, 210])
    np.testing.assert_allclose(mean[:, 5, 5], expected, atol=1)
    assert (std[::Z] == 0).all()
    assert report["output_shape"] == [10, 40, 36] and len(report["slab_scores"]) == 3
    assert not (tmp_path / "out" / ".partial").exists()


def test_interrupted_run_resumes_without_recomputing_and_matches(stack, tmp_path):
    path, _ = stack
    noisy = make_restorer(scale=0.9)  # imperfect noise prediction -> random samples, nonzero std
    reference = volume.reconstruct(noisy, path, tmp_path / "full", Z, num_samples=2, tile=32, overlap=8,
                                   fmt="zarr", log=lambda s: None)

    def interrupt(msg):
        if msg.startswith("slab 2/3"):
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(noisy, path, out, Z, num_samples=2, tile=32, overlap=8, fmt="zarr", log=interrupt)
    assert not (out / "mean.zarr").exists() and not (out / "report.json").exists()
    done = json.loads((out / ".partial" / "progress.json").read_text())["done"]
    assert sorted(done) == ["0", "1"]

    calls = []
    original = noisy.sample_joint
    noisy.sample_joint = lambda *a, **k: calls.append(1) or original(*a, **k)
    resumed = volume.reconstruct(noisy, path, out, Z, num_samples=2, tile=32, overlap=8, fmt="zarr",
                                 log=lambda s: None)
    assert len(calls) == 1  # only slab 2
    np.testing.assert_array_equal(io.read_volume(out / "mean.zarr"), io.read_volume(tmp_path / "full" / "mean.zarr"))
    np.testing.assert_allclose(io.read_volume(out / "std.zarr"), io.read_volume(tmp_path / "full" / "std.zarr"))
    assert resumed["slab_scores"] == pytest.approx(reference["slab_scores"])
    assert min(reference["slab_scores"]) > 0


def test_resume_with_other_settings_is_refused(stack, tmp_path):
    path, _ = stack

    def interrupt(msg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=2, tile=32, overlap=8,
                           log=interrupt)
    # The refusal names the leftover folder, what differs and how to start over.
    with pytest.raises(ValueError, match=r"\S+\.partial holds an unfinished run with other settings "
                                         r"\(num_samples: 2 -> 3\).*delete \S+\.partial to start over"):
        volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=3, tile=32, overlap=8,
                           log=lambda s: None)


def test_finished_output_and_input_are_never_overwritten(stack, tmp_path):
    path, slices = stack
    first = volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=1, tile=32, overlap=8,
                               log=lambda s: None)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*")}
    logs = []
    assert volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=1, tile=32, overlap=8,
                              log=logs.append) == first   # a rerun of the finished command changes nothing
    assert "already holds this finished reconstruction" in logs[0]
    with pytest.raises(ValueError, match="finished reconstruction with other settings.*seed: 0 -> 1"):
        volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=1, seed=1, tile=32, overlap=8,
                           log=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*")} == written
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(slices):
        tifffile.imwrite(folder / f"{i}.tif", s)
    with pytest.raises(ValueError, match="overlaps the input"):
        volume.reconstruct(make_restorer(), folder, folder / "out", Z, tile=32, overlap=8, log=lambda s: None)
    np.testing.assert_array_equal(tifffile.imread(path), slices)


def test_output_voxel_size_is_the_input_s_with_z_divided_by_z_factor(tmp_path):
    slices = np.stack([np.full((40, 36), v, np.uint8) for v in (30, 90, 150)])
    path = io.write_tiff(tmp_path / "sstem.tif", slices, voxel_size=(50.0, 4.0, 4.0))   # ssTEM-like
    messages = []
    report = volume.reconstruct(make_restorer(), path, tmp_path / "out", Z, num_samples=1, tile=32, overlap=8,
                                log=messages.append)
    with tifffile.TiffFile(tmp_path / "out" / "mean.tif") as tif:
        assert tif.series[0].shape == (7, 40, 36) and len(tif.pages) == 7
        assert tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["spacing"] == pytest.approx(50 / Z)
        assert tif.pages[0].tags["XResolution"].value == (1, 4)   # 1 pixel per 4 nm
    assert io.read_voxel_size(tmp_path / "out" / "std.tif") == pytest.approx((50 / Z, 4.0, 4.0))
    assert report["voxel_size_nm"]["output"] == pytest.approx([50 / Z, 4.0, 4.0])
    # 50 / 4 nm = 12.5 suggests Z = 12: the user is told that Z = 3 gives no isotropic output.
    assert any("suggests --z_factor=12" in m for m in messages)


def test_voxel_size_argument_overrides_the_metadata_and_slices_keep_xy(stack, tmp_path):
    path, _ = stack   # a TIFF without any voxel size
    assert io.read_voxel_size(path) is None
    volume.reconstruct(make_restorer(), path, tmp_path / "out", Z, num_samples=1, tile=32, overlap=8,
                       fmt="tiff-slices", voxel_size=(30.0, 10.0, 10.0), log=lambda s: None)
    slices = io.list_images(tmp_path / "out" / "mean")
    assert len(slices) == 10 and io.read_voxel_size(slices[1]) == pytest.approx((10.0, 10.0))
    assert io.read_voxel_size(tmp_path / "out" / "mean") == (None, 10.0, 10.0)   # a folder: z unknown


def test_ome_zarr_output_validates_against_ngff_with_nanometre_axes_and_a_pyramid(tmp_path):
    zarr = pytest.importorskip("zarr")
    models = pytest.importorskip("ome_zarr_models.v04", reason="ome-zarr-models is in the test extra")
    slices = np.stack([np.full((160, 140), v, np.uint8) for v in (30, 90, 150)])
    path = io.write_tiff(tmp_path / "in.tif", slices, voxel_size=(50.0, 4.0, 4.0))
    volume.reconstruct(make_restorer(), path, tmp_path / "out", Z, num_samples=2, tile=64, overlap=16,
                       fmt="ome-zarr", log=lambda s: None)
    for name in ("mean.zarr", "std.zarr"):
        image = models.Image.from_zarr(zarr.open_group(str(tmp_path / "out" / name), mode="r"))
        (multiscale,) = image.attributes.multiscales
        assert [(a.name, a.type, a.unit) for a in multiscale.axes] == [("z", "space", "nanometer"),
                                                                       ("y", "space", "nanometer"),
                                                                       ("x", "space", "nanometer")]
        scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
        assert len(scales) == 2 and scales[0] == pytest.approx([50 / Z, 4, 4])
        assert scales[1] == pytest.approx([100 / Z, 8, 8])
        assert io.read_voxel_size(tmp_path / "out" / name) == pytest.approx((50 / Z, 4.0, 4.0))
    mean = io.read_volume(tmp_path / "out" / "mean.zarr")   # level 0
    assert mean.shape == (7, 160, 140) and mean.dtype == np.uint8
    np.testing.assert_array_equal(mean[::Z], slices)
    level1 = zarr.open_group(str(tmp_path / "out" / "mean.zarr"), mode="r")["1"]
    assert level1.shape == (4, 80, 70)
    np.testing.assert_allclose(level1[0], np.rint(mean[0:2].astype(float).mean(0)[::2, ::2]), atol=1)


def test_sstem_crop_reconstruction_carries_4_nm_xy_and_8_33_nm_z_in_tiff_and_ome_zarr(tmp_path):
    """The issue's acceptance case: ssTEM (4 x 4 x 50 nm), Z = 6, as a TIFF stack and as OME-Zarr."""
    zarr = pytest.importorskip("zarr")
    models = pytest.importorskip("ome_zarr_models.v04", reason="ome-zarr-models is in the test extra")
    crop = io.read_volume(shared_path("data", "sstem-vnc-30.tif"))[:3, :64, :64]
    path = io.write_tiff(tmp_path / "sstem_crop.tif", crop)   # no voxel size in the file: given explicitly
    for fmt in ("tiff", "ome-zarr"):
        volume.reconstruct(make_restorer(), path, tmp_path / fmt, 6, num_samples=1, tile=64, overlap=16, fmt=fmt,
                           voxel_size=(50.0, 4.0, 4.0), log=lambda s: None)
    mean = tifffile.TiffFile(tmp_path / "tiff" / "mean.tif")
    with mean:
        assert mean.series[0].shape == (13, 64, 64) and mean.imagej_metadata["unit"] == "nm"
        assert mean.imagej_metadata["spacing"] == pytest.approx(50 / 6)
        xres = mean.pages[0].tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(4.0)
    image = models.Image.from_zarr(zarr.open_group(str(tmp_path / "ome-zarr" / "mean.zarr"), mode="r"))
    (multiscale,) = image.attributes.multiscales
    assert [a.name for a in multiscale.axes] == ["z", "y", "x"] and {a.unit for a in multiscale.axes} == {"nanometer"}
    assert multiscale.datasets[0].coordinateTransformations[0].scale == pytest.approx([50 / 6, 4.0, 4.0])


def _interrupt_at(prefix):
    def log(msg):
        if msg.startswith(prefix):
            raise KeyboardInterrupt
    return log


def test_resume_after_the_input_changed_is_refused_and_nothing_is_mixed(stack, tmp_path):
    path, slices = stack
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(make_restorer(), path, out, Z, num_samples=2, tile=32, overlap=8,
                           log=_interrupt_at("slab 2/3"))
    partial_before = {p: p.stat().st_mtime_ns for p in (out / ".partial").rglob("*")}
    changed = slices.copy()
    changed[2] += 1
    tifffile.imwrite(path, changed, photometric="minisblack")
    with pytest.raises(io.DataError, match=r"\.partial holds an unfinished run with other settings \(input_digest.*input_identity"):
        volume.reconstruct(make_restorer(), path, out, Z, num_samples=2, tile=32, overlap=8, log=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in (out / ".partial").rglob("*")} == partial_before


def test_a_changed_slice_is_caught_by_its_digest_even_with_the_same_file_identity(stack, tmp_path):
    path, slices = stack
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(make_restorer(), path, out, Z, num_samples=2, tile=32, overlap=8,
                           log=_interrupt_at("slab 1/3"))
    stat = path.stat()
    changed = slices.copy()
    changed[3, 0, 0] += 1  # a slice no finished slab used
    tifffile.imwrite(path, changed, photometric="minisblack")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # same size and time: a copy that kept them
    with pytest.raises(io.DataError, match=r"unfinished run with other settings \(input_digest"):
        volume.reconstruct(make_restorer(), path, out, Z, num_samples=2, tile=32, overlap=8, log=lambda s: None)


def test_a_run_killed_while_finalising_is_completed_by_the_rerun(stack, tmp_path, monkeypatch):
    path, _ = stack
    reference = volume.reconstruct(make_restorer(), path, tmp_path / "ref", Z, num_samples=2, tile=32, overlap=8,
                                   log=lambda s: None)
    out = tmp_path / "o"
    real_replace = os.replace

    def killed_after_mean(src, dst):
        if pathlib.Path(src).name == "std.tif" and pathlib.Path(src).parent.name == ".partial":
            raise KeyboardInterrupt   # killed between moving mean.tif and std.tif
        return real_replace(src, dst)

    monkeypatch.setattr(volume.os, "replace", killed_after_mean)
    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(make_restorer(), path, out, Z, num_samples=2, tile=32, overlap=8, log=lambda s: None)
    monkeypatch.setattr(volume.os, "replace", real_replace)
    assert (out / "mean.tif").is_file() and not (out / "std.tif").exists() and not (out / "report.json").exists()
    calls = []
    restorer = make_restorer()
    restorer.sample = lambda *a, **k: calls.append(1)
    report = volume.reconstruct(restorer, path, out, Z, num_samples=2, tile=32, overlap=8, log=lambda s: None)
    assert not calls and not (out / ".partial").exists()
    assert report["slab_scores"] == reference["slab_scores"]
    np.testing.assert_array_equal(io.read_volume(out / "std.tif"), io.read_volume(tmp_path / "ref" / "std.tif"))
    np.testing.assert_array_equal(io.read_volume(out / "mean.tif"), io.read_volume(tmp_path / "ref" / "mean.tif"))


def test_a_damaged_progress_file_is_named_with_the_fix(stack, tmp_path):
    path, _ = stack
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(make_restorer(), path, out, Z, tile=32, overlap=8, log=_interrupt_at("slab 1/3"))
    (out / ".partial" / "progress.json").write_text('{"settings": {"inp')
    with pytest.raises(io.DataError, match=r"progress.json: cannot read this progress file.*delete .*\.partial"):
        volume.reconstruct(make_restorer(), path, out, Z, tile=32, overlap=8, log=lambda s: None)
    with pytest.raises(io.DataError, match="progress.json: cannot read"):
        run_state.recorded_checkpoint_step(volume.progress_file(out))


def test_an_output_folder_holding_other_files_is_refused(stack, tmp_path):
    path, _ = stack
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    with pytest.raises(io.DataError, match=r"holds files this run does not write \(keep.txt\)"):
        volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, tile=32, overlap=8, log=lambda s: None)
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine" and len(list((tmp_path / "o").iterdir())) == 1


def test_a_resume_is_pinned_to_the_checkpoint_step_it_started_with(stack, tmp_path):
    """launch/isotropic.py records the step it loaded and loads that one on resume (run_state); a run whose
    step differs (a newer checkpoint picked up) is refused rather than mixed into the volume."""
    path, _ = stack
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        volume.reconstruct(make_restorer(), path, out, Z, tile=32, overlap=8, settings={"checkpoint_step": 4},
                           log=_interrupt_at("slab 1/3"))
    assert run_state.recorded_checkpoint_step(volume.progress_file(out)) == 4
    assert run_state.recorded_checkpoint_step(volume.progress_file(tmp_path / "new")) is None
    with pytest.raises(io.DataError, match=r"other settings \(checkpoint_step: 4 -> 6\)"):
        volume.reconstruct(make_restorer(), path, out, Z, tile=32, overlap=8, settings={"checkpoint_step": 6},
                           log=lambda s: None)
