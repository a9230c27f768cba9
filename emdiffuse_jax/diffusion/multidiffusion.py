"""Joint tiled sampling (MultiDiffusion, Bar-Tal et al. 2023): every sample is one coherent whole image.

The sampler's state is the whole (padded) image of every row: one row per sample, or per (slice, sample)
for vEM. At every network evaluation the image is cut into the overlapping tiles of `data.tiling`, the
network runs on all (row, tile) pairs, `rows_per_call` at a time (split over the devices of a mesh), and
the noise the network predicts for each tile is blended into the whole image with the raised-cosine window
of `tiling.blend_window`. The sampler (DDPM, DDIM or DPM-Solver++, unchanged) then takes its step on the
whole image: the blended noise gives one x0 estimate of the whole image (x0 is affine in the noise at a
given level, so this is also the blend of the tiles' unclamped x0 estimates), clamped on the whole image,
and one posterior (DDPM) or solver (DDIM, DPM) step. In the overlaps the network's predictions are
averaged, but the state is a single image, so a sample keeps the spread of a single sample there, while
tiles sampled independently and blended average two unrelated samples (lower spread along every seam).

Reproducibility: row b's noise comes from its own key (see `samplers`), and the network's output for a
tile does not depend on which tiles share its call, so results do not depend on `rows_per_call` or the
number of devices (up to float rounding of batched convolutions and of the blend's summation order).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from emdiffuse_jax.data import tiling

TILINGS = ("joint", "independent")


def overlap_pixels(tile: int, overlap: float, downsampling: int = 1) -> int:
    """Checks a tile size and overlap for a network that down-samples by `downsampling`; overlap in pixels.

    The tile must be a positive multiple of the down-sampling factor (the UNet's skip connections need it);
    the overlap (pixels, or a fraction of the tile when < 1) must be below half the tile, so that every
    pixel is covered by at most two tiles per axis and the blend window keeps a flat interior.
    """
    if tile < 1 or tile % downsampling:
        raise ValueError(f"tile {tile} must be a positive multiple of {downsampling}, the network's down-sampling "
                         f"factor; use e.g. --tile={max(downsampling, tile // downsampling * downsampling)}")
    pixels = int(round(overlap * tile)) if 0 < overlap < 1 else int(overlap)
    if not 0 <= pixels < tile / 2:
        raise ValueError(f"overlap {overlap} ({pixels} px) must be at least 0 and less than half the tile "
                         f"({tile} px); the default is tile / 4 = {tile // 4}")
    return pixels


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering an image: `origins` (T, 2) on a canvas of `canvas_shape` (the image, padded
    to at least one tile), `tile` px squares overlapping by at least `overlap` px."""

    image_shape: tuple[int, int]
    canvas_shape: tuple[int, int]
    tile: int
    overlap: int
    origins: np.ndarray

    @property
    def num_tiles(self) -> int:
        return len(self.origins)

    def window(self) -> np.ndarray:
        return tiling.blend_window((self.tile, self.tile), self.overlap)

    def pixel_index(self) -> np.ndarray:
        """(T, tile * tile) int32 flat canvas index of every tile pixel, row-major within the tile."""
        iy, ix = np.mgrid[:self.tile, :self.tile]
        width = self.canvas_shape[1]
        index = (self.origins[:, 0, None, None] + iy) * width + self.origins[:, 1, None, None] + ix
        return index.reshape(self.num_tiles, -1).astype(np.int32)

    def coverage(self) -> np.ndarray:
        """(H, W) number of tiles covering each image pixel: 1 in tile interiors, 2 or 4 in overlap bands."""
        count = np.zeros(self.canvas_shape[0] * self.canvas_shape[1], np.int32)
        np.add.at(count, self.pixel_index().ravel(), 1)
        return count.reshape(self.canvas_shape)[:self.image_shape[0], :self.image_shape[1]]

    def weight_sum(self) -> np.ndarray:
        """(canvas H * W,) total window weight per canvas pixel (positive everywhere)."""
        total = np.zeros(self.canvas_shape[0] * self.canvas_shape[1], np.float64)
        np.add.at(total, self.pixel_index().ravel(), np.tile(self.window().ravel(), self.num_tiles))
        return total


def tile_grid(image_shape, tile: int, overlap: int) -> TileGrid:
    """The tiles of `data.tiling` for an (H, W) image, square tiles of `tile` px, overlap in pixels."""
    image_shape = (int(image_shape[0]), int(image_shape[1]))
    origins = tiling.tile_origins(image_shape, (tile, tile), overlap)
    return TileGrid(image_shape, tiling.padded_shape(image_shape, (tile, tile)), int(tile), int(overlap), origins)


def blended_denoiser(net: Callable, grid: TileGrid, num_rows: int, rows_per_call: int,
                     row_sharding=None) -> Callable:
    """denoise(x, gamma, slice_index) on whole canvases: x (B, Hc, Wc, C) -> window-blended noise (B, Hc, Wc, 1).

    net(tiles (R, t, t, C), gamma (R,), slice_index (R,) or None) -> noise (R, t, t, 1) is the network;
    B = num_rows; the B x T (row, tile) pairs go through `net` rows_per_call at a time in a `lax.scan`
    (so only one call's activations are alive), the last call padded with repeated pairs of weight zero.
    `row_sharding` (optional) splits each call's rows over devices. Jittable; the tile geometry is static.
    """
    t_count, tile = grid.num_tiles, grid.tile
    hw = grid.canvas_shape[0] * grid.canvas_shape[1]
    total = num_rows * t_count
    calls = math.ceil(total / rows_per_call)
    pairs = np.arange(calls * rows_per_call)
    valid = (pairs < total).astype(np.float32).reshape(calls, rows_per_call)
    pairs = np.minimum(pairs, total - 1).astype(np.int32).reshape(calls, rows_per_call)
    origins = jnp.asarray(grid.origins, jnp.int32)
    within = (jnp.arange(tile)[:, None] * grid.canvas_shape[1] + jnp.arange(tile)[None, :]).ravel()
    window = jnp.asarray(grid.window().ravel(), jnp.float32)
    inv_weight = jnp.asarray(1.0 / grid.weight_sum(), jnp.float32)

    def denoise(x, gamma, slice_index):
        if x.shape[0] != num_rows or tuple(x.shape[1:3]) != grid.canvas_shape:
            raise ValueError(f"expected canvases ({num_rows}, {grid.canvas_shape}), got {x.shape}")
        channels = x.shape[-1]
        flat = x.reshape(num_rows * hw, channels)

        def one_call(acc, chunk):
            pair, ok = chunk
            row, t = pair // t_count, pair % t_count
            start = origins[t, 0] * grid.canvas_shape[1] + origins[t, 1]  # tile origin, flat
            index = (row * hw + start)[:, None] + within[None, :]  # (R, tile * tile) flat pixel indices
            tiles = flat[index].reshape(rows_per_call, tile, tile, channels)
            if row_sharding is not None:
                tiles = jax.lax.with_sharding_constraint(tiles, row_sharding)
            noise = net(tiles, gamma[row], None if slice_index is None else slice_index[row])
            weighted = noise.reshape(rows_per_call, tile * tile).astype(jnp.float32) * window * ok[:, None]
            return acc.at[index].add(weighted), None

        acc, _ = jax.lax.scan(one_call, jnp.zeros(num_rows * hw, jnp.float32),
                              (jnp.asarray(pairs), jnp.asarray(valid)))
        return (acc.reshape(num_rows, hw) * inv_weight).reshape(num_rows, *grid.canvas_shape, 1)

    return denoise


def joint_sampler(net: Callable, sample_fn: Callable, grid: TileGrid, num_rows: int, rows_per_call: int,
                  row_sharding=None) -> Callable:
    """run(cond (Hc, Wc, C), key_data (B, ...), slice_index (B,) or None) -> whole-canvas samples (B, Hc, Wc).

    sample_fn(denoise, cond, keys, slice_index) is a sampler of `inference.make_sample_fn`; every row b
    samples the same condition canvas with its own key (and slice index). Jittable.
    """
    denoise = blended_denoiser(net, grid, num_rows, rows_per_call, row_sharding)

    def run(cond, key_data, slice_index):
        batch_cond = jnp.broadcast_to(cond[None], (num_rows,) + cond.shape)
        return sample_fn(denoise, batch_cond, jax.random.wrap_key_data(key_data), slice_index)[..., 0]

    return run
