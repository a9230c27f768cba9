"""Synthetic EM-like phantoms (2D images and 3D volumes), so demos and tests run with no data.

Built from: Voronoi cells with wobbly boundaries (neurite-like compartments, elongated along z in 3D)
separated by dark membranes; mitochondria-like ellipsoids (dark double membrane, darker matrix with
cristae stripes); clusters of small vesicles with dark rims; per-cell grey levels, fine granular
texture and slow shading; a mild point-spread blur. Deterministic for a given seed. Output uint8
(bright background, dark membranes) like the reference's 8-bit SEM/TEM data.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def _smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Unit-variance Gaussian random field of correlation length `sigma` (per axis); large sigmas are
    filtered on a coarse grid and linearly interpolated up, which is much faster and looks the same."""
    shape = np.asarray(shape)
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), shape.shape)
    factor = np.clip(np.floor(sigma / 2.0), 1.0, np.maximum(1.0, shape // 8))
    small = np.maximum(1, np.ceil(shape / factor)).astype(int)
    n = ndimage.gaussian_filter(rng.standard_normal(tuple(small)), sigma / factor, mode="wrap")
    for axis, (m, size) in enumerate(zip(small, shape)):
        if m != size:  # separable periodic linear interpolation (much faster than ndimage.zoom)
            pos = (np.arange(size) + 0.5) * (m / size) - 0.5
            i0 = np.floor(pos).astype(int)
            f = (pos - i0).reshape([-1 if a == axis else 1 for a in range(n.ndim)])
            n = (1 - f) * np.take(n, i0 % m, axis) + f * np.take(n, (i0 + 1) % m, axis)
    std = n.std()
    return (n - n.mean()) / std if std > 1e-6 else np.zeros(tuple(shape))


def _cells(rng, shape, spacing, cell_size):
    """Voronoi labels (on warped coordinates for irregular outlines) and a membrane map in [0, 1]."""
    physical = np.array(shape) * np.array(spacing)
    n_cells = max(2, int(np.prod(physical) / cell_size ** len(shape) * (3.0 if len(shape) == 3 else 1.0)))
    seeds = np.ones(shape, bool)
    idx = tuple(rng.integers(0, s, n_cells) for s in shape)
    seeds[idx] = False
    _, nearest = ndimage.distance_transform_edt(seeds, sampling=spacing, return_indices=True)
    labels = np.ravel_multi_index(tuple(nearest), shape)
    grid = np.indices(shape, dtype=np.float64)
    wobble = cell_size * 0.12
    coords = [g + wobble / sp * _smooth_noise(rng, shape, cell_size / 4 / np.array(spacing))
              for g, sp in zip(grid, spacing)]
    labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest")
    edge = np.zeros(shape, bool)
    for axis in range(len(shape)):
        diff = np.diff(labels, axis=axis) != 0
        pad = [(0, 0)] * len(shape)
        pad[axis] = (0, 1)
        edge |= np.pad(diff, pad)
    membrane = ndimage.gaussian_filter(edge.astype(np.float64), 0.8 / np.array(spacing))
    return labels, np.clip(membrane / max(membrane.max(), 1e-12) * 1.6, 0, 1)


def _ellipsoid_mask(shape, spacing, center, radii, rotation):
    """Quadratic form of a rotated ellipsoid in a local box: returns (box slices, r^2 <= 1 field)."""
    reach = max(radii)
    lo = [max(0, int(np.floor(c - reach / s))) for c, s in zip(center, spacing)]
    hi = [min(n, int(np.ceil(c + reach / s)) + 1) for c, s, n in zip(center, spacing, shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None, None
    box = tuple(slice(l, h) for l, h in zip(lo, hi))
    local = np.stack(np.meshgrid(*[(np.arange(l, h) - c) * s for l, h, c, s in zip(lo, hi, center, spacing)],
                                 indexing="ij"), -1)
    q = local @ rotation
    r2 = np.sum((q / np.asarray(radii)) ** 2, axis=-1)
    return box, r2


def _rotation(rng, ndim):
    m, _ = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return m


def _draw_mitochondria(img, rng, spacing, count):
    ndim = img.ndim
    for _ in range(count):
        center = [rng.uniform(0, s) for s in img.shape]
        radii = [rng.uniform(14, 30)] + [rng.uniform(6, 11)] * (ndim - 1)
        rot = _rotation(rng, ndim)
        box, r2 = _ellipsoid_mask(img.shape, spacing, center, radii, rot)
        if box is None:
            continue
        r = np.sqrt(r2)
        inside = r <= 1
        region = img[box]
        local = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) * s for b, s in zip(box, spacing)],
                                     indexing="ij"), -1)
        phase = rng.uniform(0, 2 * np.pi)
        cristae = 0.5 + 0.5 * np.cos((local @ rot[:, 0]) * 2 * np.pi / rng.uniform(5, 8) + phase)
        matrix = 0.38 + 0.12 * cristae
        rim = np.exp(-((r - 1.0) * min(radii) / 1.2) ** 2)
        region[inside] = matrix[inside]
        img[box] = np.minimum(region, 1 - 0.75 * rim)


def _draw_vesicles(img, rng, spacing, clusters):
    ndim = img.ndim
    for _ in range(clusters):
        center = np.array([rng.uniform(0, s) for s in img.shape])
        for _ in range(rng.integers(6, 16)):
            c = center + rng.normal(0, 12, ndim) / np.asarray(spacing)
            radius = rng.uniform(3.0, 5.5)
            box, r2 = _ellipsoid_mask(img.shape, spacing, c, [radius] * ndim, np.eye(ndim))
            if box is None:
                continue
            r = np.sqrt(r2)
            rim = np.exp(-((r - 1.0) * radius / 0.9) ** 2)
            region = img[box]
            region[r < 1] = np.maximum(region[r < 1], 0.8)
            img[box] = np.minimum(region, 1 - 0.6 * rim)


def phantom(shape: Sequence[int], seed: int = 0, voxel_size: Sequence[float] | None = None,
            cell_size: float = 60.0) -> np.ndarray:
    """A uint8 EM-like image (H, W) or volume (Z, Y, X); voxel_size (physical units per axis, default 1)
    makes anisotropic volumes (e.g. (5, 1, 1) for sections 5 pixels thick). Sizes are in pixels of the
    finest axis; cells are elongated along z in 3D as neurites are."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"phantom shape must be 2D or 3D and positive, got {shape}")
    rng = np.random.default_rng(seed)
    spacing = np.asarray(voxel_size if voxel_size is not None else [1.0] * len(shape), np.float64)
    cell_spacing = spacing.copy()
    if len(shape) == 3:
        cell_spacing[0] *= 0.35  # neurites run along z: cells three times longer than wide
    labels, membrane = _cells(rng, shape, cell_spacing, cell_size)
    grey = rng.uniform(0.62, 0.85, labels.max() + 1)
    img = grey[labels]
    area = float(np.prod(np.array(shape) * spacing))
    _draw_mitochondria(img, rng, spacing, count=max(1, int(area / 110.0 ** len(shape) * 3)))
    _draw_vesicles(img, rng, spacing, clusters=max(1, int(area / 160.0 ** len(shape) * 2)))
    img = img * (1 - 0.8 * membrane)
    img = img + 0.05 * _smooth_noise(rng, shape, 1.2 / spacing) + 0.04 * _smooth_noise(rng, shape, 40 / spacing)
    img = ndimage.gaussian_filter(img, 0.7 / spacing)
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
