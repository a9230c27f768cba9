"""Overlapping tiles that cover every pixel, and stitching them back (with optional blending).

Geometry, per axis of length L and tile length t with overlap o (pixels): if L <= t there is one tile at
0 (the image is padded up to t); otherwise n = ceil((L - t) / (t - o)) + 1 tiles whose origins are spread
evenly from 0 to L - t, so neighbours overlap by at least o and the last tile ends exactly at the border
(unlike the reference cropper, which dropped the last stripe and used the height for both axes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _overlap_pixels(tile: int, overlap: float) -> int:
    """Overlap given in pixels (>= 1) or as a fraction of the tile (< 1)."""
    pixels = int(round(overlap * tile)) if 0 < overlap < 1 else int(overlap)
    if not 0 <= pixels < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile size {tile}) pixels or a fraction < 1")
    return pixels


def axis_origins(length: int, tile: int, overlap: float) -> np.ndarray:
    """Tile starts along one axis (see module docstring)."""
    if length < 1 or tile < 1:
        raise ValueError(f"length {length} and tile {tile} must be positive")
    if length <= tile:
        return np.zeros(1, np.int64)
    stride = tile - _overlap_pixels(tile, overlap)
    n = int(np.ceil((length - tile) / stride)) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int64)


def tile_origins(image_shape: Sequence[int], tile_shape: Sequence[int], overlap: float = 0) -> np.ndarray:
    """(N, 2) int64 (y, x) tile origins, row-major, covering an (H, W) image (non-square included)."""
    ys = axis_origins(int(image_shape[0]), int(tile_shape[0]), overlap)
    xs = axis_origins(int(image_shape[1]), int(tile_shape[1]), overlap)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def padded_shape(image_shape: Sequence[int], tile_shape: Sequence[int]) -> tuple[int, int]:
    """The canvas tiles live on: the image, grown to the tile size along axes shorter than a tile."""
    return max(int(image_shape[0]), int(tile_shape[0])), max(int(image_shape[1]), int(tile_shape[1]))


def pad_to(image: np.ndarray, shape: Sequence[int], mode: str = "reflect") -> np.ndarray:
    """Pads the first two axes at the bottom/right up to `shape` (reflection keeps EM texture natural)."""
    pads = [(0, max(0, int(s) - d)) for s, d in zip(shape, image.shape[:2])]
    if not any(p for _, p in pads):
        return image
    pads += [(0, 0)] * (image.ndim - 2)
    if mode == "reflect" and min(image.shape[:2]) < 2:
        mode = "edge"  # reflection of a single row/column is undefined
    return np.pad(image, pads, mode=mode)


def extract_tiles(image: np.ndarray, tile_shape: Sequence[int], overlap: float = 0,
                  pad_mode: str = "reflect") -> tuple[np.ndarray, np.ndarray]:
    """Cuts (H, W, ...) into tiles (N, th, tw, ...) and returns them with their origins."""
    th, tw = int(tile_shape[0]), int(tile_shape[1])
    origins = tile_origins(image.shape[:2], (th, tw), overlap)
    canvas = pad_to(image, padded_shape(image.shape, (th, tw)), pad_mode)
    tiles = np.stack([canvas[y:y + th, x:x + tw] for y, x in origins])
    return tiles, origins


def blend_window(tile_shape: Sequence[int], overlap: float) -> np.ndarray:
    """Separable raised-cosine weights (th, tw): 1 inside, cosine ramps over the overlap at each edge.

    The ramp is evaluated at pixel centres, w(i) = (1 - cos(pi (i + 0.5) / o)) / 2 for i < o, so it
    never reaches zero and every pixel keeps a positive total weight when stitched.
    """
    axes = []
    for t in (int(tile_shape[0]), int(tile_shape[1])):
        o = _overlap_pixels(t, overlap)
        w = np.ones(t, np.float64)
        if o > 0:
            o = min(o, t // 2)
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(o) + 0.5) / o)
            w[:o] = np.minimum(w[:o], ramp)
            w[t - o:] = np.minimum(w[t - o:], ramp[::-1])
        axes.append(w)
    return np.outer(axes[0], axes[1])


def stitch_tiles(tiles: np.ndarray, origins: np.ndarray, image_shape: Sequence[int],
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted average of tiles (N, th, tw, ...) placed at `origins`, cropped to `image_shape` (H, W).

    weights: (th, tw) window shared by all tiles (e.g. `blend_window`), or None for a plain average.
    Accumulates in float64; returns the tiles' dtype (rounded for integers), so tiles cut from an image
    stitch back to exactly that image.
    """
    tiles = np.asarray(tiles)
    origins = np.asarray(origins)
    if tiles.shape[0] != origins.shape[0]:
        raise ValueError(f"{tiles.shape[0]} tiles but {origins.shape[0]} origins")
    th, tw = tiles.shape[1:3]
    extra = tiles.shape[3:]
    height, width = padded_shape(image_shape, (th, tw))
    if weights is None:
        w = np.ones((th, tw), np.float64)
    else:
        w = np.asarray(weights, np.float64)
        if w.shape != (th, tw) or not (w > 0).all():
            raise ValueError(f"weights must be a positive ({th}, {tw}) window, got shape {w.shape}")
    wx = w.reshape((th, tw) + (1,) * len(extra))
    acc = np.zeros((height, width) + extra, np.float64)
    norm = np.zeros((height, width) + (1,) * len(extra), np.float64)
    for tile, (y, x) in zip(tiles, origins):
        acc[y:y + th, x:x + tw] += wx * tile
        norm[y:y + th, x:x + tw] += wx
    if not (norm > 0).all():
        raise ValueError("tiles do not cover the whole image; use tile_origins for the origins")
    out = (acc / norm)[: int(image_shape[0]), : int(image_shape[1])]
    if tiles.dtype.kind in "ui":
        info = np.iinfo(tiles.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(tiles.dtype)
