"""Tiled restoration in both tiling modes: exact stitching with an identity-like network, no seams, batching,
out-of-memory back-off, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emdiffuse_jax import inference
from emdiffuse_jax.diffusion import samplers

GAMMAS = np.linspace(0.05, 0.999, 4)


def identity_apply(params, x, gamma, slice_index):
    """Predicts the noise that makes the clean estimate equal to the (first) condition channel + offset."""
    g = gamma[:, None, None, None]
    target = x[..., :1] + params["offset"]
    return (x[..., -1:] - jnp.sqrt(g) * target) / jnp.sqrt(1.0 - g)


def noise_apply(params, x, gamma, slice_index):
    """Predicts zero noise: every sample is a different random image (for std tests)."""
    return jnp.zeros_like(x[..., -1:])


def ddim(denoise, cond, key, slice_index):
    return samplers.ddim_sample(denoise, cond, key, GAMMAS, eta=1.0, slice_index=slice_index)


def smooth_image(h, w):
    yy, xx = np.mgrid[:h, :w]
    return (0.8 * np.sin(yy / 9.0) * np.cos(xx / 13.0)).astype(np.float32)


@pytest.fixture(scope="module", params=["joint", "independent"])
def identity(request):
    return inference.Restorer(identity_apply, {"offset": jnp.float32(0.0)}, ddim, batch_per_device=1,
                              tiling=request.param)


def test_identity_network_stitches_back_to_the_input_exactly(identity):
    image = smooth_image(70, 90)  # not a multiple of the tile, non-square
    pred = inference.predict_image(identity, image, jax.random.key(0), num_samples=2, tile=32, overlap=8)
    assert pred.num_tiles > 4
    np.testing.assert_allclose(pred.mean, image, atol=1e-5)
    np.testing.assert_allclose(pred.std, 0.0, atol=1e-5)


def test_image_smaller_than_a_tile_is_padded_and_cropped_back(identity):
    image = smooth_image(20, 11)
    pred = inference.predict_image(identity, image, jax.random.key(0), num_samples=1, tile=32, overlap=8)
    assert pred.mean.shape == (20, 11) and pred.num_tiles == 1
    np.testing.assert_allclose(pred.mean, image, atol=1e-5)


@pytest.mark.parametrize("tiling", ["joint", "independent"])
def test_harmonisation_removes_a_per_tile_brightness_offset(tiling):
    biased = inference.Restorer(identity_apply, {"offset": jnp.float32(0.1)}, ddim, batch_per_device=1,
                                tiling=tiling)
    image = smooth_image(48, 48)
    plain = inference.predict_image(biased, image, jax.random.key(0), num_samples=1, tile=32, overlap=8)
    fixed = inference.predict_image(biased, image, jax.random.key(0), num_samples=1, tile=32, overlap=8,
                                    harmonize=True)
    assert np.abs(plain.mean - image - 0.1).max() < 1e-4
    # Each tile's mean now matches its input tile; what remains is a sub-percent blend of those shifts.
    assert np.abs(fixed.mean - image).mean() < 0.01


@pytest.mark.parametrize("tiling", ["joint", "independent"])
def test_std_shows_no_tile_seams(tiling):
    restorer = inference.Restorer(noise_apply, {}, ddim, batch_per_device=4, tiling=tiling)
    image = np.zeros((56, 56), np.float32)  # tiles at 0 and 24 on both axes: overlap band 24..31
    pred = inference.predict_image(restorer, image, jax.random.key(1), num_samples=8, tile=32, overlap=8,
                                   keep_samples=True)
    assert pred.samples.shape == (8, 56, 56)
    # The std is statistically flat and must not dip in the overlap band: joint samples are whole images,
    # and independent tiles blend variances (it would dip by ~15 % over blended independent samples).
    for profile in (pred.std.mean(axis=0), pred.std.mean(axis=1)):
        inside = np.concatenate([profile[:20], profile[36:]]).mean()
        assert abs(profile[24:32].mean() - inside) < 0.05 * inside
    assert pred.std.mean() > 0.1


@pytest.mark.parametrize("tiling", ["joint", "independent"])
def test_results_do_not_depend_on_the_chunk_size(tiling):
    image = smooth_image(40, 40)
    a = inference.Restorer(noise_apply, {}, ddim, batch_per_device=1, tiling=tiling)
    b = inference.Restorer(noise_apply, {}, ddim, batch_per_device=3, tiling=tiling)
    pa = inference.predict_image(a, image, jax.random.key(3), num_samples=2, tile=32, overlap=8)
    pb = inference.predict_image(b, image, jax.random.key(3), num_samples=2, tile=32, overlap=8)
    np.testing.assert_allclose(pa.mean, pb.mean, atol=1e-6)
    np.testing.assert_allclose(pa.std, pb.std, atol=1e-6)


@pytest.mark.parametrize("tiling", ["joint", "independent"])
def test_out_of_memory_halves_the_batch_and_still_finishes(tiling):
    devices, calls = len(jax.local_devices()), []

    def too_many(rows):  # as XLA on GPU/TPU: an error for a call with too many rows
        calls.append(rows)
        if rows > devices:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")

    def flaky_apply(params, x, gamma, slice_index):  # joint: the network sees the rows of one call
        too_many(x.shape[0])
        return identity_apply(params, x, gamma, slice_index)

    restorer = inference.Restorer(flaky_apply, {"offset": jnp.float32(0.0)}, ddim, batch_per_device=4,
                                  tiling=tiling)
    if tiling == "independent":  # the network is vmapped over rows: fail the chunk's program instead
        program = restorer._independent_program
        restorer._independent_program = lambda rows: (lambda *args: too_many(rows) or program(rows)(*args))
    image = smooth_image(70, 90)  # 12 tiles x 3 samples: 4 rows per device planned
    pred = inference.predict_image(restorer, image, jax.random.key(0), num_samples=3, tile=32, overlap=8)
    np.testing.assert_allclose(pred.mean, image, atol=1e-5)
    assert restorer.last_plan.rows_per_device == 4 and 4 * devices in calls and calls[-1] == devices


@pytest.mark.parametrize("tiling", ["joint", "independent"])
def test_between_slices_uses_the_slice_index_and_condition_order(tiling):
    def slice_apply(params, x, gamma, slice_index):
        # Clean estimate: a blend of [later, earlier] by the depth of the slice to generate.
        w = (slice_index.astype(jnp.float32)[:, None, None, None] + 1.0) / 3.0
        target = w * x[..., :1] + (1 - w) * x[..., 1:2]
        g = gamma[:, None, None, None]
        return (x[..., -1:] - jnp.sqrt(g) * target) / jnp.sqrt(1.0 - g)

    restorer = inference.Restorer(slice_apply, {}, ddim, batch_per_device=2, tiling=tiling)
    earlier, later = np.full((40, 36), -0.6, np.float32), np.full((40, 36), 0.3, np.float32)
    pred = inference.predict_between(restorer, earlier, later, 3, jax.random.key(0), num_samples=2,
                                     tile=32, overlap=8)
    assert pred.mean.shape == (2, 40, 36)
    np.testing.assert_allclose(pred.mean[0], -0.3, atol=1e-5)
    np.testing.assert_allclose(pred.mean[1], 0.0, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (np.full((8, 8), np.nan, np.float32), "NaN"),
    (np.zeros((2, 8, 8), np.float32), "2D image"),
])
def test_bad_images_are_rejected(identity, bad, match):
    with pytest.raises(ValueError, match=match):
        inference.predict_image(identity, bad, jax.random.key(0), tile=32, overlap=8)


@pytest.mark.parametrize("tile, overlap, match", [
    (30, 8, "multiple of 4"), (32, 16, "less than half the tile"), (32, 0.5, "less than half"), (32, -1, "at least 0")])
def test_bad_tile_or_overlap_is_a_clear_error(tile, overlap, match):
    restorer = inference.Restorer(identity_apply, {"offset": jnp.float32(0.0)}, ddim)
    restorer.downsampling = 4  # as a UNet with channel_mults of length 3
    with pytest.raises(ValueError, match=match):
        inference.predict_image(restorer, smooth_image(40, 40), jax.random.key(0), tile=tile, overlap=overlap)


def test_tile_and_overlap_default_to_the_training_patch_and_a_quarter_of_it():
    restorer = inference.Restorer(identity_apply, {"offset": jnp.float32(0.0)}, ddim, default_tile=48)
    assert restorer.resolve_tiling(None, None) == (48, 12)
    assert restorer.resolve_tiling(64, None) == (64, 16) and restorer.resolve_tiling(None, 0.125) == (48, 6)


def test_fewer_than_one_sample_is_rejected(identity):
    with pytest.raises(ValueError, match="num_samples"):
        inference.predict_image(identity, np.zeros((8, 8), np.float32), jax.random.key(0), num_samples=0)


def test_superres_restores_the_bilinearly_upsampled_input_at_twice_the_size(identity):
    from emdiffuse_jax.data import degrade

    image = smooth_image(20, 24)
    pred = inference.predict_image(identity, image, jax.random.key(0), num_samples=1, tile=32, overlap=8, upscale=2)
    assert pred.mean.shape == (40, 48)
    np.testing.assert_allclose(pred.mean, degrade.upsample2_bilinear(image), atol=1e-5)
