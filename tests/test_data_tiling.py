"""Tiles cover every pixel (borders, non-square, small images) and stitch back to the image."""

import numpy as np
import pytest

from emdiffuse_jax.data.tiling import axis_origins, blend_window, extract_tiles, stitch_tiles, tile_origins


@pytest.mark.parametrize("length,tile,overlap", [(2048, 256, 32), (1000, 256, 0.125), (256, 256, 32),
                                                 (257, 256, 32), (300, 128, 16), (100, 256, 32)])
def test_axis_origins_cover_everything_with_at_least_the_overlap(length, tile, overlap):
    o = axis_origins(length, tile, overlap)
    covered = np.zeros(max(length, tile), bool)
    for s in o:
        covered[s:s + tile] = True
    assert covered.all() and o[0] == 0 and o[-1] + tile == max(length, tile)
    ov = int(round(overlap * tile)) if overlap < 1 else overlap
    if len(o) > 1:
        assert (np.diff(o) <= tile - ov).all()


def test_reference_cropper_gap_is_closed_for_2048_pixels():
    # The reference's strict '<' loop covered only pixels 0..1823 of a 2048 image.
    o = axis_origins(2048, 256, 32)
    assert o[-1] == 2048 - 256 and len(o) == 9


@pytest.mark.parametrize("shape", [(300, 517), (517, 300), (64, 80), (256, 256), (1, 300)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_uniform_stitch_reproduces_the_image_exactly(shape, dtype):
    img = (np.random.default_rng(0).random(shape) * 250).astype(dtype)
    tiles, origins = extract_tiles(img, (128, 128), overlap=24)
    assert tiles.shape[1:3] == (128, 128)
    out = stitch_tiles(tiles, origins, img.shape)
    assert out.dtype == img.dtype and np.array_equal(out, img)


def test_blended_stitch_reproduces_the_image_and_supports_channels():
    img = np.random.default_rng(1).random((300, 410, 2)).astype(np.float32)
    tiles, origins = extract_tiles(img, (96, 128), overlap=0.25)
    w = blend_window((96, 128), 0.25)
    np.testing.assert_allclose(stitch_tiles(tiles, origins, img.shape[:2], w), img, atol=1e-6)


def test_blend_window_is_smooth_positive_and_flat_inside():
    w = blend_window((64, 64), 16)
    assert (w > 0).all() and w.max() == 1 and w[32, 32] == 1
    row = w[32]
    assert (np.diff(row[:16]) > 0).all() and np.allclose(row, row[::-1])


def test_blending_hides_a_per_tile_offset_seam():
    img = np.zeros((200, 200))
    tiles, origins = extract_tiles(img, (128, 128), overlap=56)
    tiles = tiles + np.arange(len(tiles))[:, None, None]  # each tile has its own brightness
    hard = stitch_tiles(tiles, origins, img.shape)
    soft = stitch_tiles(tiles, origins, img.shape, blend_window((128, 128), 56))
    assert np.abs(np.diff(soft, axis=1)).max() < np.abs(np.diff(hard, axis=1)).max()


def test_tile_origins_for_non_square_images_use_each_axis():
    o = tile_origins((300, 700), (256, 256), 32)
    assert set(o[:, 0]) == {0, 44} and o[:, 1].max() == 700 - 256


def test_bad_weights_and_overlap_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        axis_origins(500, 128, 128)
    tiles, origins = extract_tiles(np.zeros((130, 130)), (64, 64), 8)
    with pytest.raises(ValueError, match="positive"):
        stitch_tiles(tiles, origins, (130, 130), np.zeros((64, 64)))
