"""Isotropic reconstruction: slice interleaving, resume without recomputation, atomic outputs, bad inputs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from emdiffuse_jax import inference, volume
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
    mean = io.read_volume(tmp_path / "out" / "mean")
    std = io.read_volume(tmp_path / "out" / "std")
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
    with pytest.raises(ValueError, match="different settings"):
        volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=3, tile=32, overlap=8,
                           log=lambda s: None)


def test_finished_output_and_input_are_never_overwritten(stack, tmp_path):
    path, slices = stack
    volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=1, tile=32, overlap=8,
                       log=lambda s: None)
    with pytest.raises(ValueError, match="finished reconstruction"):
        volume.reconstruct(make_restorer(), path, tmp_path / "o", Z, num_samples=1, tile=32, overlap=8,
                           log=lambda s: None)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(slices):
        tifffile.imwrite(folder / f"{i}.tif", s)
    with pytest.raises(ValueError, match="overlaps the input"):
        volume.reconstruct(make_restorer(), folder, folder / "out", Z, tile=32, overlap=8, log=lambda s: None)
    np.testing.assert_array_equal(tifffile.imread(path), slices)
