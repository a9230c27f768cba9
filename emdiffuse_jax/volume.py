"""Isotropic volume reconstruction (vEMDiffuse-i / -a) slab by slab, streaming from and to disk, resumable.

N input slices with axial factor Z give (N - 1) * Z + 1 output slices: output slice i * Z is input slice i,
output slices i * Z + 1 ... i * Z + Z - 1 are generated between input slices i and i + 1 (slab i). Only the
two input slices of the current slab are in memory.

On disk (in the output folder):
  .partial/           work in progress: mean and std as Zarr arrays or TIFF slice folders, and
                      progress.json (settings, input identity: file sizes and times and a digest of every
                      slice, checkpoint step, finished slabs; replaced atomically after every slab)
  mean.zarr | mean/   the isotropic volume in the input's dtype and intensity range
  std.zarr  | std/    the per-voxel std of the K samples in [0, 1] units (float32; 0 on input slices)
  report.json         settings, per-slab uncertainty scores, timings
The final names appear only when every slab is done (mean and std are moved out of .partial at the end),
so an interrupted run never leaves a complete-looking volume. Rerunning the same command resumes: slabs
listed in progress.json are not recomputed; a run killed while finalising (the report is then already in
progress.json) only completes the moves. A resume whose settings, input (file sizes and times, or the
content of any slice) or checkpoint step differ is refused with what differs. Every slab's keys
derive from (seed, slab), so a resumed volume is identical to an uninterrupted one. The output folder may
hold nothing but these names.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Callable

import jax
import numpy as np

from emdiffuse_jax import inference, run_state, uncertainty
from emdiffuse_jax.data import io, normalize

FORMATS = ("zarr", "tiff")


def isotropic_depth(num_slices: int, z_factor: int) -> int:
    """Number of output slices: (N - 1) * Z + 1."""
    return (num_slices - 1) * z_factor + 1


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


PROGRESS = "progress.json"


def progress_file(output: str | os.PathLike) -> pathlib.Path:
    """Where an unfinished reconstruction into `output` keeps its settings and finished slabs."""
    return pathlib.Path(output) / ".partial" / PROGRESS


def _slice_digest(plane: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(plane).tobytes()).hexdigest()[:16]


def reconstruct(restorer: inference.Restorer, input_path: str | os.PathLike, output: str | os.PathLike,
                z_factor: int, *, num_samples: int = 2, seed: int = 0, tile: int = 256, overlap: float = 32,
                harmonize: bool = False, fmt: str = "tiff", normalization: str = "auto",
                threshold: float = uncertainty.DEFAULT_THRESHOLD, dataset: str | None = None,
                settings: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Reconstructs the isotropic volume of `input_path` into the folder `output`; returns the report.

    settings: extra JSON-able run settings (checkpoint, its step, sampler...) stored with the progress.
    What identifies the run (every setting, the input's files by size and modification time, and the
    digest of every input slice read) is recorded at the start; a resume that differs in any of them is
    refused with what differs, so slabs of two runs never mix. A rerun of a finished run returns its report.
    normalization: 'auto' ('uint8' for 8-bit input, else 'percentile'), or a mode of `data.normalize`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    input_path = pathlib.Path(input_path)
    output = io.check_output_folder(output, [input_path])
    volume = io.read_volume(input_path, lazy=True, dataset=dataset)
    n, height, width = volume.shape
    depth = isotropic_depth(n, z_factor)
    suffix = ".zarr" if fmt == "zarr" else ""
    names = [f"mean{suffix}", f"std{suffix}"]
    progress_path = progress_file(output)
    partial = progress_path.parent
    if output.is_dir():
        foreign = sorted(p.name for p in output.iterdir() if p.name not in (*names, "report.json", ".partial"))
        if foreign:
            raise io.DataError(f"{output} holds files this run does not write ({', '.join(foreign[:3])}); "
                               "isotropic.py writes only into a new or empty folder - choose a new output folder")
    # One pass over the input before anything is written: every slice is readable, and what was read is
    # recorded (a digest per slice), so a resume can prove it continues on the very same data.
    digests = [_slice_digest(volume[z]) for z in range(n)]
    mode = normalization if normalization != "auto" else ("uint8" if volume.dtype == np.uint8 else "percentile")
    params = normalize.fit_normalization(volume, mode)
    run_settings = json.loads(json.dumps(
        {"input": str(input_path.resolve()), "input_identity": io.file_identity(input_path),
         "input_digest": hashlib.sha256("".join(digests).encode()).hexdigest()[:16],
         "shape": [n, height, width], "z_factor": z_factor, "num_samples": num_samples, "seed": seed,
         "tile": tile, "overlap": overlap, "harmonize": harmonize, "format": fmt,
         "normalization": params.to_dict(), **(settings or {})}))
    if (output / "report.json").exists():
        report = run_state.read_json(output / "report.json", "report", f"delete {output} and run again")
        diff = run_state.settings_difference(report.get("settings", {}), run_settings)
        if diff:
            raise io.DataError(f"{output} already holds a finished reconstruction with other settings ({diff}); "
                               "choose a new output folder")
        shutil.rmtree(partial, ignore_errors=True)   # left only by a kill after the report was written
        log(f"{output} already holds this finished reconstruction; nothing to do")
        return report
    if progress_path.exists():
        progress = run_state.read_json(progress_path, "progress file", f"delete {partial} to start over")
        diff = run_state.settings_difference(progress.get("settings", {}), run_settings)
        if diff:
            raise io.DataError(f"{partial} holds an unfinished run with other settings ({diff}); rerun with the "
                               f"same settings, input and checkpoint to resume, or delete {partial} to start over")
        log(f"resuming: {len(progress['done'])} of {n - 1} slabs already done")
    elif any((output / name).exists() for name in names):
        raise io.DataError(f"{output} already holds a volume ({' or '.join(names)}) but no report or progress of "
                           "this run; choose a new output folder")
    else:
        partial.mkdir(parents=True, exist_ok=True)
        progress = {"settings": run_settings, "done": {}}
        run_state.write_json(progress_path, progress)
    if "report" not in progress:   # not yet finalising
        report = _reconstruct_slabs(restorer, volume, digests, input_path, partial, progress, z_factor, fmt, params,
                                    num_samples=num_samples, seed=seed, tile=tile, overlap=overlap,
                                    harmonize=harmonize, log=log)
        report.update(settings=run_settings, threshold=threshold,
                      unreliable_slabs=[i for i, s in enumerate(report["slab_scores"])
                                        if s is not None and s > threshold])
        progress["report"] = report
        run_state.write_json(progress_path, progress)   # from here on a rerun only completes the renames below
    for name in names:
        if (partial / name).exists():
            os.replace(partial / name, output / name)
        elif not (output / name).exists():
            raise io.DataError(f"{partial / name} is missing though {progress_path} says the run was finalising; "
                               f"delete {output} and run again")
    run_state.write_json(output / "report.json", progress["report"])
    shutil.rmtree(partial)
    return progress["report"]


def _reconstruct_slabs(restorer, volume, digests, input_path, partial, progress, z_factor, fmt, params, *,
                       num_samples, seed, tile, overlap, harmonize, log) -> dict:
    """Computes every slab not yet listed in progress['done'] into partial/ (the volumes complete); returns
    the report body. Every slice read must still have the digest of the first pass (`digests`)."""
    n, height, width = volume.shape
    depth = isotropic_depth(n, z_factor)
    suffix = ".zarr" if fmt == "zarr" else ""
    mean_store = _SliceStore(partial / f"mean{suffix}", fmt, (depth, height, width), volume.dtype)
    std_store = _SliceStore(partial / f"std{suffix}", fmt, (depth, height, width), np.float32)
    def read(z: int) -> np.ndarray:
        plane = volume[z]
        if _slice_digest(plane) != digests[z]:
            raise io.DataError(f"{input_path}: slice {z} changed while this run was reading the volume; leave the "
                               f"input alone while it runs, then rerun (or delete {partial} to start over)")
        return plane

    base_key = jax.random.key(seed)
    zero = np.zeros((height, width), np.float32)
    start = time.perf_counter()
    for i in range(n - 1):
        if str(i) in progress["done"]:
            continue
        t0 = time.perf_counter()
        first, second = read(i), read(i + 1)
        earlier, later = (normalize.apply_normalization(v, params) for v in (first, second))
        pred = inference.predict_between(restorer, earlier, later, z_factor, jax.random.fold_in(base_key, i),
                                         num_samples=num_samples, tile=tile, overlap=overlap,
                                         harmonize=harmonize, name=f"{input_path} slices {i},{i + 1}",
                                         progress=lambda done, total: log(f"  slab {i + 1}: {done}/{total} "
                                                                          "tile samples"))
        mean_store.write(i * z_factor, first)
        std_unit = pred.std / 2.0
        for c in range(z_factor - 1):
            mean_store.write(i * z_factor + c + 1, normalize.denormalize(np.clip(pred.mean[c], -1, 1), params))
            std_store.write(i * z_factor + c + 1, std_unit[c])
        std_store.write(i * z_factor, zero)
        score = uncertainty.image_score(std_unit) if num_samples > 1 else None
        progress["done"][str(i)] = {"score": score, "seconds": time.perf_counter() - t0}
        run_state.write_json(partial / PROGRESS, progress)
        log(f"slab {i + 1}/{n - 1} done in {time.perf_counter() - t0:.1f} s"
            + (f", uncertainty {score:.4f}" if score is not None else ""))
    mean_store.write(depth - 1, read(n - 1))
    std_store.write(depth - 1, zero)
    scores = [progress["done"][str(i)]["score"] for i in range(n - 1)]
    return {"input_shape": [n, height, width], "output_shape": [depth, height, width],
            "score_definition": "mean per-voxel std of the K samples over a slab's generated slices, [0,1] units",
            "slab_scores": scores, "slab_seconds": [progress["done"][str(i)]["seconds"] for i in range(n - 1)],
            "seconds_this_run": time.perf_counter() - start}
