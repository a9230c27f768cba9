"""Isotropic volume reconstruction (vEMDiffuse-i / -a) slab by slab, streaming from and to disk, resumable.

N input slices with axial factor Z give (N - 1) * Z + 1 output slices: output slice i * Z is input slice i,
output slices i * Z + 1 ... i * Z + Z - 1 are generated between input slices i and i + 1 (slab i). Only the
two input slices of the current slab are in memory.

On disk (in the output folder):
  .partial/           work in progress: mean and std as Zarr arrays or TIFF slice folders, and
                      progress.json (settings + finished slabs, replaced atomically after every slab)
  mean.zarr | mean/   the isotropic volume in the input's dtype and intensity range
  std.zarr  | std/    the per-voxel std of the K samples in [0, 1] units (float32; 0 on input slices)
  report.json         settings, per-slab uncertainty scores, timings
The final names appear only when every slab is done (the .partial folder is renamed at the end), so an
interrupted run never leaves a complete-looking volume. Rerunning the same command resumes: slabs listed
in progress.json are not recomputed. Every slab's keys derive from (seed, slab), so a resumed volume is
identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from typing import Callable

import jax
import numpy as np

from emdiffuse_jax import inference, uncertainty
from emdiffuse_jax.data import io, normalize

FORMATS = ("zarr", "tiff")


def isotropic_depth(num_slices: int, z_factor: int) -> int:
    """Number of output slices: (N - 1) * Z + 1."""
    return (num_slices - 1) * z_factor + 1


def _atomic_json(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class _SliceStore:
    """Write-once-per-slice (Z, Y, X) output, as a Zarr array or a folder of TIFF slices."""

    def __init__(self, path: pathlib.Path, fmt: str, shape: tuple, dtype):
        self.path, self.fmt, self.shape, self.dtype = path, fmt, shape, np.dtype(dtype)
        if fmt == "zarr":
            import zarr
            if path.exists():
                self._array = zarr.open_array(store=str(path), mode="r+")
            else:
                self._array = zarr.create_array(store=str(path), shape=shape, dtype=self.dtype,
                                                chunks=(1,) + tuple(min(s, 512) for s in shape[1:]))
        else:
            path.mkdir(parents=True, exist_ok=True)

    def write(self, z: int, plane: np.ndarray) -> None:
        plane = np.asarray(plane).astype(self.dtype, copy=False)
        if self.fmt == "zarr":
            self._array[z] = plane
            return
        final = self.path / f"{z:06d}.tif"
        tmp = self.path / f".{z:06d}.tmp.tif"  # hidden: slice readers skip it until renamed
        tmp.unlink(missing_ok=True)
        io.write_tiff(tmp, plane)
        os.replace(tmp, final)

    def final_name(self) -> str:
        return self.path.name


def _check_paths(input_path: pathlib.Path, output: pathlib.Path) -> None:
    inp, out = input_path.resolve(), output.resolve()
    if inp == out or out in inp.parents or (inp.is_dir() and inp in out.parents):
        raise ValueError(f"output folder {output} overlaps the input {input_path}; choose a separate folder so "
                         "the input can never be overwritten")


def reconstruct(restorer: inference.Restorer, input_path: str | os.PathLike, output: str | os.PathLike,
                z_factor: int, *, num_samples: int = 2, seed: int = 0, tile: int | None = None,
                overlap: float | None = None,
                harmonize: bool = False, fmt: str = "tiff", normalization: str = "auto",
                threshold: float = uncertainty.DEFAULT_THRESHOLD, dataset: str | None = None,
                settings: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Reconstructs the isotropic volume of `input_path` into the folder `output`; returns the report.

    settings: extra JSON-able run settings (checkpoint, sampler...) stored with the progress; resuming with
    different settings is refused. normalization: 'auto' ('uint8' for 8-bit input, else 'percentile'),
    or a mode of `data.normalize`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    tile, overlap = restorer.resolve_tiling(tile, overlap)
    input_path, output = pathlib.Path(input_path), pathlib.Path(output)
    volume = io.read_volume(input_path, lazy=True, dataset=dataset)
    _check_paths(input_path, output)
    n, height, width = volume.shape
    depth = isotropic_depth(n, z_factor)
    suffix = ".zarr" if fmt == "zarr" else ""
    finals = [output / f"{name}{suffix}" for name in ("mean", "std")] + [output / "report.json"]
    if any(p.exists() for p in finals):
        raise ValueError(f"{output} already holds a finished reconstruction; choose a new output folder")
    mode = normalization if normalization != "auto" else ("uint8" if volume.dtype == np.uint8 else "percentile")
    params = normalize.fit_normalization(volume, mode)
    run_settings = {"input": str(input_path.resolve()), "shape": [n, height, width], "z_factor": z_factor,
                    "num_samples": num_samples, "seed": seed, "tile": tile, "overlap": overlap,
                    "tiling": restorer.tiling,
                    "harmonize": harmonize, "format": fmt, "normalization": params.to_dict(),
                    **(settings or {})}
    partial = output / ".partial"
    progress_path = partial / "progress.json"
    if progress_path.exists():
        progress = json.loads(progress_path.read_text())
        if progress["settings"] != json.loads(json.dumps(run_settings)):
            raise ValueError(f"{output} holds an unfinished run with different settings; rerun with the same "
                             f"settings to resume, or choose a new output folder")
        log(f"resuming: {len(progress['done'])} of {n - 1} slabs already done")
    else:
        partial.mkdir(parents=True, exist_ok=True)
        progress = {"settings": run_settings, "done": {}}
        _atomic_json(progress_path, progress)
    mean_store = _SliceStore(partial / f"mean{suffix}", fmt, (depth, height, width), volume.dtype)
    std_store = _SliceStore(partial / f"std{suffix}", fmt, (depth, height, width), np.float32)
    base_key = jax.random.key(seed)
    zero = np.zeros((height, width), np.float32)
    start, done_now = time.perf_counter(), 0
    todo = sum(str(i) not in progress["done"] for i in range(n - 1))
    for i in range(n - 1):
        if str(i) in progress["done"]:
            continue
        t0 = time.perf_counter()
        earlier, later = (normalize.apply_normalization(volume[j], params) for j in (i, i + 1))
        pred = inference.predict_between(restorer, earlier, later, z_factor, jax.random.fold_in(base_key, i),
                                         num_samples=num_samples, tile=tile, overlap=overlap,
                                         harmonize=harmonize, name=f"{input_path} slices {i},{i + 1}")
        mean_store.write(i * z_factor, volume[i])
        std_unit = pred.std / 2.0
        for c in range(z_factor - 1):
            mean_store.write(i * z_factor + c + 1, normalize.denormalize(np.clip(pred.mean[c], -1, 1), params))
            std_store.write(i * z_factor + c + 1, std_unit[c])
        std_store.write(i * z_factor, zero)
        score = uncertainty.image_score(std_unit) if num_samples > 1 else None
        progress["done"][str(i)] = {"score": score, "seconds": time.perf_counter() - t0}
        _atomic_json(progress_path, progress)
        done_now += 1
        log(f"slab {i + 1}/{n - 1}: " + inference.progress_line(done_now, todo, time.perf_counter() - start, restorer,
                                                              pred.num_tiles, num_samples * (z_factor - 1))
            + f", this slab {time.perf_counter() - t0:.1f} s"
            + (f", uncertainty {score:.4f}" if score is not None else ""))
    mean_store.write(depth - 1, volume[n - 1])
    std_store.write(depth - 1, zero)
    scores = [progress["done"][str(i)]["score"] for i in range(n - 1)]
    report = {"settings": run_settings, "input_shape": [n, height, width], "output_shape": [depth, height, width],
              "threshold": threshold,
              "score_definition": "mean per-voxel std of the K samples over a slab's generated slices, [0,1] units",
              "slab_scores": scores,
              "unreliable_slabs": [i for i, s in enumerate(scores) if s is not None and s > threshold],
              "slab_seconds": [progress["done"][str(i)]["seconds"] for i in range(n - 1)],
              "seconds_this_run": time.perf_counter() - start}
    for p in finals[:2]:
        os.replace(partial / p.name, p)
    _atomic_json(output / "report.json", report)
    shutil.rmtree(partial)
    return report
