"""napari reader for emdiffuse-jax outputs: a `emdiffuse predict` or `emdiffuse isotropic` output folder
(it holds report.json), or one of their mean files, opened as mean, std and reliability layers with the
outputs' voxel sizes as layer scales (nm)."""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import numpy as np

from emdiffuse_jax.data import io

LayerData = tuple   # (data, layer kwargs, layer type), napari's LayerDataTuple


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """napari's reader hook: a reader when `path` is an emdiffuse-jax output, else None (napari tries others)."""
    if isinstance(path, list):
        path = path[0] if len(path) == 1 else ""
    folder = _output_folder(pathlib.Path(path)) if path else None
    return (lambda _path: read_outputs(folder)) if folder is not None else None


def _output_folder(path: pathlib.Path) -> pathlib.Path | None:
    if path.is_dir() and (path / "report.json").is_file():
        return path
    if path.name in ("mean.tif", "mean.zarr") or path.name.endswith("_mean.tif"):
        return path.parent if (path.parent / "report.json").is_file() else None
    return None


def _scale(voxel_size, ndim: int) -> tuple[float, ...]:
    sizes = list(voxel_size or [])[-ndim:]
    sizes = [None] * (ndim - len(sizes)) + sizes
    return tuple(1.0 if v is None else float(v) for v in sizes)


_META = {"unit": "nm", "source": "emdiffuse_jax"}


def _layers(stem: str, mean, std, reliability, scale, threshold) -> list[LayerData]:
    layers = [(mean, {"name": f"{stem} mean", "scale": scale, "colormap": "gray", "metadata": _META}, "image"),
              (std, {"name": f"{stem} std", "scale": scale, "colormap": "magma", "blending": "additive",
                     "metadata": {**_META, "values": "std of the K samples, [0, 1] intensity units"}}, "image")]
    if reliability is not None:
        layers.append(reliability_layer(stem, reliability, scale, threshold))
    return layers


def reliability_layer(stem: str, local_score, scale, threshold: float) -> LayerData:
    """The local uncertainty score, coloured up to twice the threshold (flagged above it)."""
    return (local_score, {"name": f"{stem} reliability", "scale": scale, "colormap": "turbo",
                          "contrast_limits": (0.0, 2 * threshold), "blending": "additive",
                          "metadata": {**_META, "threshold": threshold,
                                       "values": "local uncertainty score; flagged above threshold"}}, "image")


def read_outputs(folder: str | pathlib.Path, name: str | None = None) -> list[LayerData]:
    """Layer-data tuples of every output in an emdiffuse-jax output folder, scaled in nm; a volume's
    layers are named after `name` (default: the folder's name)."""
    folder = pathlib.Path(folder)
    report = json.loads((folder / "report.json").read_text())
    if "images" not in report:   # emdiffuse isotropic: mean and std volumes (read lazily, slice by slice)
        names = {"tiff": ("mean.tif", "std.tif"), "tiff-slices": ("mean", "std"), "ome-zarr": ("mean.zarr", "std.zarr")}
        fmt = report["settings"].get("format", "tiff")
        mean, std = (io.read_volume(folder / name, lazy=True) for name in names["ome-zarr" if fmt == "zarr" else fmt])
        scale = _scale(report.get("voxel_size_nm", {}).get("output"), 3)
        return _layers(name or folder.name, mean, std, None, scale, float(report["threshold"]))
    threshold = float(report["images"][0]["threshold"])
    layers, seen = [], set()
    for entry in report["images"]:
        stem = entry.get("stack", entry["name"])
        if stem in seen:
            continue
        seen.add(stem)
        read = (lambda kind: io.read_volume(folder / f"{stem}_{kind}.tif")) if "stack" in entry else \
            (lambda kind: io.read_image(folder / f"{stem}_{kind}.tif"))
        reliability = read("reliability") if (folder / f"{stem}_reliability.tif").exists() else None
        mean = read("mean")
        layers += _layers(stem, mean, read("std"), reliability,
                          _scale((entry.get("voxel_size_nm") or {}).get("output"), np.ndim(mean)), threshold)
    return layers
