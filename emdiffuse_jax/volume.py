"""Isotropic volume reconstruction (vEMDiffuse-i / -a) slab by slab, streaming from and to disk, resumable.

N input slices with axial factor Z give (N - 1) * Z + 1 output slices: output slice i * Z is input slice i,
output slices i * Z + 1 ... i * Z + Z - 1 are generated between input slices i and i + 1 (slab i). Only the
two input slices of the current slab are in memory.

On disk (in the output folder), by output format:
  .partial/           work in progress: mean and std as TIFF slice folders (tiff, tiff-slices) or OME-Zarr
                      images (ome-zarr), and progress.json (settings, input identity: file sizes and times
                      and a digest of every slice, checkpoint step, finished slabs; replaced atomically
                      after every slab)
  mean.tif            tiff (default): the isotropic volume, one multi-page ImageJ TIFF in the input's dtype
                      and intensity range, with its voxel size (Fiji: File > Open shows the scale)
  std.tif             the per-voxel std of the K samples in [0, 1] units (float32; 0 on input slices)
  mean/ std/          tiff-slices: the same as folders of one TIFF per slice (x/y pixel size in each)
  mean.zarr std.zarr  ome-zarr (alias zarr): OME-Zarr images (NGFF 0.4) with axes z, y, x in nanometres and a
                      multiscale pyramid (data/ome_zarr.py)
  report.json         settings, voxel sizes, per-slab uncertainty scores, timings
Voxel size: the input's (from its metadata, or `voxel_size`) with z divided by Z: a 4 x 4 x 50 nm ssTEM
stack with Z = 6 gives 4 x 4 x 8.33 nm. The final names appear only when every slab is done (mean and
std are moved out of .partial at the end), so an interrupted run never leaves a complete-looking volume.
Rerunning the same command resumes: slabs listed in progress.json are not recomputed; a run killed while
finalising (the report is then already in progress.json) only completes the moves. A resume whose
settings, input (file sizes and times, or the content of any slice) or checkpoint step differ is refused
with what differs. Every slab's keys derive from (seed, slab), so a resumed volume is identical to an
uninterrupted one. The output folder may hold nothing but these names.

Several processes (jax.distributed, e.g. launch/isotropic.py with --num_processes): the slabs are split
into contiguous blocks, one per process (`parallel.process_share`); each process computes its block with
its local devices and writes its slices into the shared .partial (one file per slice, or disjoint one-slice
chunks of the OME-Zarr image), recording its finished slabs in .partial/done-<process>.json (resumed
per process, with any process count). After a barrier process 0 assembles the final volumes and the
report; the others return once their share is written. The output folder must be on a file system every
process sees. Keys derive from (seed, slab) only, so the volume equals a single-process run.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import time
from typing import Callable

import jax
import numpy as np

from emdiffuse_jax import inference, parallel, run_state, uncertainty
from emdiffuse_jax.data import intensity as intensity_lib
from emdiffuse_jax.data import io, ome_zarr

FORMATS = ("tiff", "tiff-slices", "ome-zarr")   # "zarr" is accepted for "ome-zarr"
_FINAL_NAMES = {"tiff": ("mean.tif", "std.tif"), "tiff-slices": ("mean", "std"), "ome-zarr": ("mean.zarr", "std.zarr")}


def isotropic_depth(num_slices: int, z_factor: int) -> int:
    """Number of output slices: (N - 1) * Z + 1."""
    return (num_slices - 1) * z_factor + 1


class _SliceStore:
    """Write-once-per-slice (Z, Y, X) output in .partial: an OME-Zarr image, or a folder of TIFF slices that
    `finish` turns into the final output (one multi-page TIFF for 'tiff', the folder itself for
    'tiff-slices'). voxel_size: (z, y, x) nm of the output, None where unknown."""

    def __init__(self, partial: pathlib.Path, name: str, fmt: str, shape: tuple, dtype, voxel_size):
        self.fmt, self.shape, self.dtype, self.voxel_size = fmt, shape, np.dtype(dtype), voxel_size
        self.final_name = _FINAL_NAMES[fmt][("mean", "std").index(name)]
        if fmt == "ome-zarr":
            self.path = partial / self.final_name
            self._zarr = ome_zarr.OmeZarrVolume(self.path, shape, self.dtype, voxel_size)
        else:
            self.path = partial / name
            self.path.mkdir(parents=True, exist_ok=True)

    def write(self, z: int, plane: np.ndarray) -> None:
        plane = np.asarray(plane).astype(self.dtype, copy=False)
        if self.fmt == "ome-zarr":
            self._zarr.write(z, plane)
            return
        final = self.path / f"{z:06d}.tif"
        tmp = self.path / f".{z:06d}.tmp.tif"  # hidden: slice readers skip it until renamed
        tmp.unlink(missing_ok=True)
        io.write_tiff(tmp, plane, voxel_size=self.voxel_size[1:])
        os.replace(tmp, final)

    def finish(self) -> pathlib.Path:
        """The complete output inside .partial, ready to be renamed into the output folder."""
        if self.fmt == "ome-zarr":
            self._zarr.finish()
            return self.path
        if self.fmt == "tiff-slices":
            return self.path
        stack = self.path.parent / self.final_name
        files = [self.path / f"{z:06d}.tif" for z in range(self.shape[0])]
        io.write_tiff_stack(stack, (io.read_image(f) for f in files), self.shape, self.dtype,
                            voxel_size=self.voxel_size, overwrite=True)
        return stack


def suggest_z_factor(voxel_size) -> int | None:
    """The Z that makes the output isotropic, z spacing / x-y spacing rounded, when both are known."""
    if voxel_size is None or len(voxel_size) != 3 or None in voxel_size:
        return None
    z, y, x = voxel_size
    return max(2, round(z / ((y + x) / 2)))


PROGRESS = "progress.json"


def progress_file(output: str | os.PathLike) -> pathlib.Path:
    """Where an unfinished reconstruction into `output` keeps its settings and finished slabs."""
    return pathlib.Path(output) / ".partial" / PROGRESS


def _slice_digest(plane: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(plane).tobytes()).hexdigest()[:16]


def reconstruct(restorer: inference.Restorer, input_path: str | os.PathLike, output: str | os.PathLike,
                z_factor: int, *, num_samples: int = 2, seed: int = 0, tile: int | None = None,
                overlap: float | None = None,
                harmonize: bool = False, fmt: str = "tiff", normalization: str = "auto",
                threshold: float = uncertainty.DEFAULT_THRESHOLD, dataset: str | None = None,
                intensity: intensity_lib.Intensity | None = None, settings: dict | None = None,
                voxel_size=None, log: Callable[[str], None] = print, process_index: int | None = None,
                process_count: int | None = None) -> dict:
    """Reconstructs the isotropic volume of `input_path` into the folder `output`; returns the report.

    settings: extra JSON-able run settings (checkpoint, its step, sampler...) stored with the progress.
    What identifies the run (every setting, the input's files by size and modification time, and the
    digest of every input slice) is recorded at the start; a resume that differs in any of them is refused
    with what differs, so slabs of two runs never mix. A rerun of a finished run returns its report.
    intensity: the checkpoint's contract (`intensity.from_meta`); normalization: a mode of
    `intensity.prediction_mapping` ('auto' = the contract, or per volume when there is none); generated
    slices are written in the input volume's dtype. voxel_size: the input's (z, y, x) in nm, overriding what
    its metadata says (None: read it; axes still unknown are left out of the output's metadata). A Z far
    from the voxel size's z / xy ratio is warned about (the output will not be isotropic).
    """
    fmt = "ome-zarr" if fmt == "zarr" else fmt
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if fmt not in FORMATS:
        raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
    if z_factor < 2:
        raise ValueError(f"z_factor must be >= 2 (slices generated = z_factor - 1), got {z_factor}")
    tile, overlap = restorer.resolve_tiling(tile, overlap)   # bad tile/overlap: fail before writing
    input_path = pathlib.Path(input_path)
    output = io.check_output_folder(output, [input_path])
    volume = io.read_volume(input_path, lazy=True, dataset=dataset)
    n, height, width = volume.shape
    depth = isotropic_depth(n, z_factor)
    in_voxel = tuple(voxel_size) if voxel_size is not None else io.read_voxel_size(input_path, dataset)
    if in_voxel is not None and len(in_voxel) != 3:
        raise ValueError(f"voxel_size needs three values (z, y, x) in nm, got {in_voxel}")
    in_voxel = in_voxel or (None, None, None)
    out_voxel = (None if in_voxel[0] is None else in_voxel[0] / z_factor,) + tuple(in_voxel[1:])
    names = _FINAL_NAMES[fmt]
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
    try:
        mapping = intensity_lib.prediction_mapping(volume, intensity, normalization, name=str(input_path))
    except ValueError as err:
        raise io.DataError(f"{input_path}: {err}") from err
    run_settings = run_state.as_json(
        {"input": str(input_path.resolve()), "input_identity": io.file_identity(input_path),
         "input_digest": hashlib.sha256("".join(digests).encode()).hexdigest()[:16],
         "shape": [n, height, width], "z_factor": z_factor, "num_samples": num_samples, "seed": seed,
         "tile": tile, "overlap": overlap, "tiling": restorer.tiling, "harmonize": harmonize, "format": fmt,
         intensity_lib.META_KEY: mapping.to_dict(), "voxel_size_nm": list(in_voxel), **(settings or {})})
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
    elif any((output / name).exists() for name in names):
        raise io.DataError(f"{output} already holds a volume ({' or '.join(names)}) but no report or progress of "
                           "this run; choose a new output folder")
    else:
        progress = {"settings": run_settings, "done": {}}
    parallel.wait_for_all_processes("volume: checked")   # every process checked before anything is written
    if index == 0 and not progress_path.exists():
        partial.mkdir(parents=True, exist_ok=True)
        run_state.write_json(progress_path, progress)
    if index == 0 and count > 1 and "report" not in progress:   # one process creates the shared stores
        for name, dtype in (("mean", volume.dtype), ("std", np.float32)):
            _SliceStore(partial, name, fmt, (depth, height, width), dtype, out_voxel)
    parallel.wait_for_all_processes("volume: opened")
    if count > 1:   # slabs other processes finished (any earlier process count)
        progress["done"].update(_done_by_processes(partial))
    if progress["done"]:
        log(f"resuming: {len(progress['done'])} of {n - 1} slabs already done")
    suggested = suggest_z_factor(in_voxel)
    if suggested is not None and abs(z_factor - suggested) > 0.25 * suggested:
        log(f"warning: the voxel size {_describe(in_voxel)} suggests --z_factor={suggested} (z / x-y spacing) for "
            f"an isotropic output; with {z_factor} the output z spacing is {out_voxel[0]:.3g} nm")
    shape = (depth, height, width)
    if "report" not in progress:   # not yet finalising
        share = parallel.process_share(n - 1, index, count)
        if count > 1:
            log(f"process {index} of {count}: slabs {share.start}..{share.stop - 1} of {n - 1}")
        start = time.perf_counter()
        _reconstruct_slabs(restorer, volume, digests, input_path, partial, progress, z_factor, fmt,
                           mapping, out_voxel, num_samples=num_samples, seed=seed, tile=tile,
                           overlap=overlap, harmonize=harmonize, log=log, slabs=share, last=index == 0,
                           done_file=partial / (PROGRESS if count == 1 else f"done-{index}.json"))
        if count > 1:
            parallel.wait_for_all_processes("volume: slabs written")
            progress["done"].update(_done_by_processes(partial))
        report = _report_body(progress, volume.shape, z_factor, out_voxel, time.perf_counter() - start)
        if index > 0:   # process 0 assembles the volumes and writes the report
            return {"settings": run_settings, **report, "threshold": threshold}
        scores = report["slab_scores"]
        progress["report"] = {"settings": run_settings, **report, "threshold": threshold,
                              "unreliable_slabs": [i for i, s in enumerate(scores) if s is not None and s > threshold]}
        run_state.write_json(progress_path, progress)   # from here on a rerun only completes the moves below
    elif index > 0:
        return progress["report"]
    for name, final, dtype in zip(("mean", "std"), names, (volume.dtype, np.float32)):
        if not (output / final).exists():   # else moved before a kill
            store = _SliceStore(partial, name, fmt, shape, dtype, out_voxel)
            os.replace(store.finish(), output / final)
    run_state.write_json(output / "report.json", progress["report"])
    shutil.rmtree(partial)
    return progress["report"]


def _done_by_processes(partial: pathlib.Path) -> dict:
    """Finished slabs recorded by every process of a multi-process run (its .partial/done-*.json)."""
    done: dict = {}
    for path in sorted(partial.glob("done-*.json")):
        done.update(run_state.read_json(path, "progress file", f"delete {partial} to start over")["done"])
    return done


def _report_body(progress: dict, shape, z_factor: int, out_voxel, seconds: float) -> dict:
    n, height, width = shape
    depth = isotropic_depth(n, z_factor)
    missing = [i for i in range(n - 1) if str(i) not in progress["done"]]
    if missing:
        raise RuntimeError(f"slabs {missing[:5]} were computed by no process")
    in_voxel = progress["settings"]["voxel_size_nm"]
    return {"input_shape": [n, height, width], "output_shape": [depth, height, width],
            "voxel_size_nm": {"input": list(in_voxel), "output": list(out_voxel), "axes": "zyx"},
            "score_definition": "mean per-voxel std of the K samples over a slab's generated slices, [0,1] units",
            "slab_scores": [progress["done"][str(i)]["score"] for i in range(n - 1)],
            "slab_seconds": [progress["done"][str(i)]["seconds"] for i in range(n - 1)],
            "seconds_this_run": seconds}


def _reconstruct_slabs(restorer, volume, digests, input_path, partial, progress, z_factor, fmt, mapping, out_voxel,
                       *, num_samples, seed, tile, overlap, harmonize, log, slabs: range, last: bool,
                       done_file: pathlib.Path) -> None:
    """Computes the slabs of `slabs` not yet listed in progress['done'] into partial/, recording each in
    `done_file`, and (`last`) the volume's last slice. Every slice read must still have the digest of the
    first pass (`digests`)."""
    n, height, width = volume.shape
    depth = isotropic_depth(n, z_factor)
    mean_store = _SliceStore(partial, "mean", fmt, (depth, height, width), volume.dtype, out_voxel)
    std_store = _SliceStore(partial, "std", fmt, (depth, height, width), np.float32, out_voxel)

    def read(z: int) -> np.ndarray:
        plane = volume[z]
        if _slice_digest(plane) != digests[z]:
            raise io.DataError(f"{input_path}: slice {z} changed while this run was reading the volume; leave the "
                               f"input alone while it runs, then rerun (or delete {partial} to start over)")
        return plane

    base_key = jax.random.key(seed)
    zero = np.zeros((height, width), np.float32)
    start, done_now = time.perf_counter(), 0
    todo = sum(str(i) not in progress["done"] for i in slabs)
    for i in slabs:
        if str(i) in progress["done"]:
            continue
        t0 = time.perf_counter()
        first, second = read(i), read(i + 1)
        earlier, later = (mapping.input_to_model(v) for v in (first, second))
        pred = inference.predict_between(restorer, earlier, later, z_factor, jax.random.fold_in(base_key, i),
                                         num_samples=num_samples, tile=tile, overlap=overlap,
                                         harmonize=harmonize, name=f"{input_path} slices {i},{i + 1}")
        mean_store.write(i * z_factor, first)
        std_unit = pred.std / 2.0
        for c in range(z_factor - 1):
            mean_store.write(i * z_factor + c + 1, mapping.output_from_model(pred.mean[c], volume.dtype))
            std_store.write(i * z_factor + c + 1, std_unit[c])
        std_store.write(i * z_factor, zero)
        score = uncertainty.image_score(std_unit) if num_samples > 1 else None
        progress["done"][str(i)] = {"score": score, "seconds": time.perf_counter() - t0}
        run_state.write_json(done_file, progress if done_file.name == PROGRESS else {"done": progress["done"]})
        done_now += 1
        log(f"slab {i + 1}/{n - 1}: " + inference.progress_line(done_now, todo, time.perf_counter() - start, restorer,
                                                              pred.num_tiles, num_samples * (z_factor - 1))
            + f", this slab {time.perf_counter() - t0:.1f} s"
            + (f", uncertainty {score:.4f}" if score is not None else ""))
    if last:
        mean_store.write(depth - 1, read(n - 1))
        std_store.write(depth - 1, zero)


def _describe(voxel) -> str:
    return " x ".join(f"{v:g}" for v in voxel[::-1]) + " nm (x y z)"
