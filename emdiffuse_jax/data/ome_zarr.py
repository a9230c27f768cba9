"""OME-Zarr (NGFF 0.4) images written chunk by chunk: a (Z, Y, X) volume with its voxel size in nanometres
and a multiscale pyramid, readable by napari (napari-ome-zarr), Fiji (MoBIE / n5-viewer), neuroglancer and
`io.read_volume` (which opens level 0).

Layout (Zarr format 2, as NGFF 0.4 requires): the group's .zattrs holds ``multiscales`` (axes z, y, x of
type space with their unit, one dataset per level with its scale and translation); level ``0`` is full
resolution, level k is level k-1 averaged over 2 x 2 x 2 voxels (the last odd slice/row/column averaged with
fewer). Level 0 is written slice by slice (resumable: `open_or_create` reopens a partial store); the pyramid
is built at the end, two level-k slices at a time, so no level is ever held in memory whole.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

NGFF_VERSION = "0.4"
UNIT = "nanometer"   # an UDUNITS-2 name, as NGFF requires
_MIN_LEVEL_SIDE = 64


def num_levels(shape: Sequence[int]) -> int:
    """Pyramid levels: halve until the smaller lateral side would drop below 64 pixels (at least one)."""
    side, levels = min(shape[-2:]), 1
    while side // 2 >= _MIN_LEVEL_SIDE and levels < 8:
        side //= 2
        levels += 1
    return levels


def _chunks(shape: Sequence[int]) -> tuple[int, ...]:
    return (1,) + tuple(min(int(s), 512) for s in shape[1:])


class OmeZarrVolume:
    """A (Z, Y, X) OME-Zarr image being written: ``write(z, plane)`` for level 0, then ``finish()``."""

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype, voxel_size_nm: Sequence[float | None]):
        import zarr

        self.path, self.shape, self.dtype = pathlib.Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self.voxel_size = tuple(1.0 if v is None else float(v) for v in voxel_size_nm)
        self.units_known = all(v is not None for v in voxel_size_nm)
        if (self.path / ".zgroup").exists():   # resume a partial write
            self._group = zarr.open_group(store=str(self.path), mode="r+", zarr_format=2)
            self._level0 = self._group["0"]
            if tuple(self._level0.shape) != self.shape or self._level0.dtype != self.dtype:
                raise ValueError(f"{self.path}: holds a {self._level0.shape} {self._level0.dtype} array, expected "
                                 f"{self.shape} {self.dtype}; delete it to start over")
        else:
            self._group = zarr.open_group(store=str(self.path), mode="w", zarr_format=2)
            self._level0 = self._group.create_array("0", shape=self.shape, dtype=self.dtype,
                                                    chunks=_chunks(self.shape), fill_value=0)
            self._write_metadata(1)   # (only when created: other processes may be opening it; finish rewrites it)

    def write(self, z: int, plane: np.ndarray) -> None:
        self._level0[z] = np.asarray(plane).astype(self.dtype, copy=False)

    def finish(self, levels: int | None = None) -> None:
        """Builds pyramid levels 1.. from level 0 and writes the final multiscales metadata."""
        levels = num_levels(self.shape) if levels is None else levels
        source = self._level0
        for level in range(1, levels):
            shape = tuple((s + 1) // 2 for s in source.shape)
            target = self._group.create_array(str(level), shape=shape, dtype=self.dtype, chunks=_chunks(shape),
                                              fill_value=0, overwrite=True)
            for z in range(shape[0]):
                pair = np.asarray(source[2 * z:2 * z + 2], np.float64)
                target[z] = _cast(_halve_plane(pair.mean(axis=0)), self.dtype)
            source = target
        self._write_metadata(levels)

    def _write_metadata(self, levels: int) -> None:
        datasets = []
        for level in range(levels):
            factor = 2.0 ** level
            scale = [v * factor for v in self.voxel_size]
            # A level-k voxel covers 2^k level-0 voxels: its centre lies (2^k - 1) / 2 voxels further in.
            translation = [v * (factor - 1) / 2 for v in self.voxel_size]
            transforms = [{"type": "scale", "scale": scale}]
            if level:
                transforms.append({"type": "translation", "translation": translation})
            datasets.append({"path": str(level), "coordinateTransformations": transforms})
        axes = [{"name": n, "type": "space", **({"unit": UNIT} if self.units_known else {})} for n in "zyx"]
        self._group.attrs["multiscales"] = [{
            "version": NGFF_VERSION, "name": self.path.name, "axes": axes, "datasets": datasets,
            "type": "mean of 2x2x2 voxels",
            "metadata": {"description": "written by emdiffuse_jax; level k = level k-1 averaged over 2x2x2"}}]


def _halve_plane(plane: np.ndarray) -> np.ndarray:
    """Mean over 2 x 2 pixel blocks; an odd last row/column is averaged with itself."""
    h, w = plane.shape
    padded = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def write_volume(path: str | os.PathLike, volume, voxel_size_nm: Sequence[float | None]) -> pathlib.Path:
    """Writes a whole (Z, Y, X) array or array-like (read slice by slice) as a new OME-Zarr image."""
    if pathlib.Path(path).exists():
        raise FileExistsError(f"{path}: already exists; choose another output path")
    out = OmeZarrVolume(path, volume.shape, volume.dtype, voxel_size_nm)
    for z in range(volume.shape[0]):
        out.write(z, np.asarray(volume[z]))
    out.finish()
    return out.path
