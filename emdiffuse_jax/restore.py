"""File-level 2D restoration runs: read images, predict with self-assessment, write every output and a report.

For each input image `<name>` the output folder receives
  <name>_mean.tif         the restored image (mean of K samples) in the training targets' units and dtype
                          (the checkpoint's intensity contract, data/intensity.py; per-image modes and
                          checkpoints without a contract: the input's)
  <name>_std.tif          per-pixel std of the K samples, float32, [0, 1] units (fraction of the range)
  <name>_reliability.tif  local uncertainty score (std box-averaged over `window` px), float32, [0, 1] units
  <name>_samples.tif      the K individual samples (same units as the mean), only with keep_samples
  <name>_{input,mean,std,reliability}.png   8-bit previews (reliability: white = reliable, black = above
                          the threshold)
and report.json lists settings, per-image and per-tile scores, flags, threshold and timings. Every file is
written under a hidden temporary name and renamed when complete; report.json is written last.

A TIFF stack in gives stacks out: `<stack>_mean.tif`, `<stack>_std.tif` and `<stack>_reliability.tif`
are multi-page ImageJ TIFFs (one page per input slice; per-slice files wait in a hidden folder until the
last slice is done), while previews, samples and the report stay per slice (`<stack>_z0000`, ...).
Every TIFF carries the input's pixel size (voxel size for stacks; halved in x and y for super-resolution),
read from its metadata or given as `voxel_size`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable

import jax
import numpy as np

from emdiffuse_jax import inference, models, run_state, uncertainty
from emdiffuse_jax.data import intensity as intensity_lib
from emdiffuse_jax.data import io, normalize
from emdiffuse_jax.diffusion import objectives, schedules


def model_patch_size(loaded) -> int:
    """The patch size the model was trained on (its checkpoint record; the network's image_size, 256 for a
    published .pth, when the record has none): the default tile, the context the network learnt."""
    size = loaded.meta.get("patch_size") or (loaded.meta.get("config") or {}).get("data", {}).get("patch_size")
    return int(size or loaded.unet.image_size)


def train_schedule(loaded) -> dict:
    """The noise schedule the model was trained with (its checkpoint's config; the published one otherwise)."""
    schedule = (loaded.meta.get("config") or {}).get("diffusion", {}).get("train_schedule")
    return dict(schedule) if schedule else dict(schedules.TRAIN_SCHEDULE)


def spec_for_checkpoint(spec: inference.SamplerSpec, loaded) -> inference.SamplerSpec:
    """`spec` with the checkpoint's training schedule (where the fast samplers' noise grid starts)."""
    return dataclasses.replace(spec, train_schedule=tuple(train_schedule(loaded).items()))


def make_restorer(loaded, spec: inference.SamplerSpec, *, tiling: str = "joint", batch_per_device: int | None = None,
                  memory_limit_gb: float | None = None) -> inference.Restorer:
    """A Restorer for a `checkpointing.LoadedModel` (EMA weights) and a sampler spec: the sampler's noise grid
    from the checkpoint's training schedule, the default tile from its training patch size.

    A regression-baseline checkpoint ignores the sampler: its one deterministic prediction per tile runs
    through the same tiling and stitching as the diffusion samples (use K = 1 with it).
    """
    spec = spec_for_checkpoint(spec, loaded)
    regression = objectives.objective_of(loaded.meta) == "regression"
    return inference.Restorer(models.make_apply_fn(loaded.unet), loaded.params, sample_fn_for(loaded, spec),
                              tiling=tiling, unet=loaded.unet, default_tile=model_patch_size(loaded),
                              batch_per_device=batch_per_device, memory_limit_gb=memory_limit_gb,
                              steps=1 if regression else spec.steps)


def sample_fn_for(loaded, spec: inference.SamplerSpec):
    """The sampler a checkpoint needs: the regression model's direct prediction, or `spec`'s diffusion
    sampler, mapped back from the residual parametrisation when the model was trained with it."""
    if objectives.objective_of(loaded.meta) == "regression":
        return objectives.regression_sample
    sample_fn = inference.make_sample_fn(spec)
    if objectives.parametrization_of(loaded.meta) == "residual":
        z_factor = loaded.meta.get("z_factor")
        sample_fn = objectives.residual_sampler(sample_fn, int(z_factor) - 1 if loaded.unet.vem else None)
    return sample_fn


def samples_for(loaded, requested: int, log: Callable[[str], None] = print) -> int:
    """K for a model: as requested, but 1 for a regression baseline (its prediction is deterministic, so more
    samples would be identical copies with a zero std, and a zero score is no self-assessment)."""
    if objectives.objective_of(loaded.meta) == "regression" and requested > 1:
        log(f"regression model: one deterministic prediction (K = 1, no uncertainty) instead of K = {requested}")
        return 1
    return requested


def list_inputs(path: str | os.PathLike) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(name, loader) per 2D image of a file (an image or every slice of a stack) or a folder of images."""
    path = pathlib.Path(path)
    if not path.exists():
        raise io.DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return [(p.stem, (lambda p=p: io.read_image(p))) for p in io.list_images(path)]
    if path.suffix.lower() in (".tif", ".tiff"):
        shape = io.tiff_shape(path)
        if len(shape) == 3 and shape[-1] not in (3, 4):
            stack = io.read_volume(path, lazy=True)
            return [(f"{path.stem}_z{z:04d}", (lambda z=z: stack[z])) for z in range(shape[0])]
    return [(path.stem, lambda: io.read_image(path))]


def _stack_depth(path: pathlib.Path) -> int | None:
    """Slices of a TIFF stack input (None for an image or a folder)."""
    if path.is_dir() or path.suffix.lower() not in (".tif", ".tiff"):
        return None
    shape = io.tiff_shape(path)
    return shape[0] if len(shape) == 3 and shape[-1] not in (3, 4) else None


def _input_voxel_sizes(path: pathlib.Path, names: list[str]) -> dict:
    """name -> the (z, y, x) or (y, x) size in nm its file records (None: unknown)."""
    if path.is_dir():
        files = {p.stem: p for p in io.list_images(path)}
        return {name: io.read_voxel_size(files[name]) for name in names}
    size = io.read_voxel_size(path)
    return {name: size for name in names}


def _output_voxel_size(in_size, task: str):
    """Super-resolution halves the pixel size in x and y; z (of a stack) and denoising keep it."""
    if in_size is None:
        return None
    factor = 2 if task == "superres" else 1
    *z, y, x = in_size
    return tuple(z) + tuple(None if v is None else v / factor for v in (y, x))


def _write_atomic(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    tmp.unlink(missing_ok=True)
    write(tmp)
    os.replace(tmp, path)


def to_preview(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """8-bit preview: linear stretch of [lo, hi] (default: 0.5 and 99.5 percentiles) to [0, 255]."""
    image = np.asarray(image, np.float64)
    lo = np.percentile(image, 0.5) if lo is None else lo
    hi = np.percentile(image, 99.5) if hi is None else hi
    return np.clip(np.rint((image - lo) / max(hi - lo, 1e-12) * 255), 0, 255).astype(np.uint8)


def write_png(path: pathlib.Path, image8: np.ndarray) -> None:
    from PIL import Image

    _write_atomic(path, lambda p: Image.fromarray(image8).save(p, format="PNG"))


PROGRESS = ".progress.json"


def progress_file(output: str | os.PathLike) -> pathlib.Path:
    """Where an unfinished prediction into `output` keeps its settings and finished images."""
    return pathlib.Path(output) / PROGRESS


def _check_unique_names(items, input_path: pathlib.Path) -> None:
    """Two inputs with one name (a.tif and a.png) would write the same output files."""
    seen: set[str] = set()
    for name, _ in items:
        if name in seen:
            raise io.DataError(f"{input_path}: two images are both named '{name}' (e.g. {name}.tif and {name}.png); "
                               "their outputs would overwrite each other - rename one or move it to another folder")
        seen.add(name)


def _output_names(name: str) -> set[str]:
    return {f"{name}_{kind}" for kind in ("mean.tif", "std.tif", "reliability.tif", "samples.tif", "input.png",
                                          "mean.png", "std.png", "reliability.png")}


def _open_output(output: pathlib.Path, names: list[str], run_settings: dict, log,
                 stack: str | None = None) -> tuple[dict | None, dict]:
    """The output folder contract: a new or empty folder, this run's unfinished folder (resumed: returns the
    finished images' report entries), or this run's finished folder (returns its report). Anything else,
    a user's file above all, is refused before anything is written."""
    report_path, progress_path = output / "report.json", output / PROGRESS
    if report_path.exists():
        report = run_state.read_json(report_path, "report", f"delete {output} and run again")
        diff = run_state.settings_difference(report.get("settings", {}), run_settings)
        if diff:
            raise io.DataError(f"{output} already holds a finished prediction with other settings ({diff}); "
                               "choose a new output folder")
        log(f"{output} already holds this finished prediction; nothing to do")
        return report, {}
    done: dict = {}
    if progress_path.exists():
        progress = run_state.read_json(progress_path, "progress file", f"delete {progress_path} to start over")
        diff = run_state.settings_difference(progress.get("settings", {}), run_settings)
        if diff:
            raise io.DataError(f"{output} holds an unfinished prediction with other settings ({diff}); rerun "
                               "with the same settings and inputs to resume, or choose a new output folder")
        done = progress.get("done", {})
        log(f"resuming: {len(done)} of {len(names)} images already done")
    elif output.exists() and any(output.iterdir()):
        found = sorted(p.name for p in output.iterdir())
        raise io.DataError(f"{output} is not empty (holds {', '.join(found[:3])}"
                           f"{', ...' if len(found) > 3 else ''}); predict.py writes only into a new or empty "
                           "folder, so no file of yours is overwritten - choose a new output folder")
    ours = set().union(*(_output_names(n) for n in names)) | {PROGRESS}
    if stack is not None:   # a stack's mean, std and reliability are one multi-page file each
        ours |= {f"{stack}_{kind}.tif" for kind in ("mean", "std", "reliability")}
    foreign = sorted(p.name for p in output.iterdir() if p.name not in ours and not p.name.startswith(".")) \
        if output.exists() else []
    if foreign:
        raise io.DataError(f"{output} holds files this run does not write ({', '.join(foreign[:3])}); move them "
                           "or choose a new output folder")
    return None, done


def _load_checked(name: str, load: Callable[[], np.ndarray], input_path: pathlib.Path,
                  intensity: intensity_lib.Intensity | None, normalization: str, harmonize: bool):
    """One input image and its intensity mapping, or a DataError naming it."""
    raw = load()
    if raw.ndim != 2:
        raise io.DataError(f"{input_path} ({name}): expected a 2D image, got shape {raw.shape}")
    try:
        mapping = intensity_lib.prediction_mapping(raw, intensity, normalization, name=f"{input_path} ({name})")
    except ValueError as err:
        raise io.DataError(f"{input_path} ({name}): {err}") from err
    if harmonize and mapping.input != mapping.target:
        raise ValueError("--harmonize matches each sample's brightness to its input's, but this model maps "
                         "inputs and targets differently (its intensity contract: the brightness change "
                         "is learned), so harmonising would undo it; run without --harmonize")
    return raw, mapping


def restore_files(restorer: inference.Restorer, input_path: str | os.PathLike, output: str | os.PathLike, *,
                  task: str, num_samples: int = 2, seed: int = 0, tile: int | None = None,
                  overlap: float | None = None,
                  harmonize: bool = False, keep_samples: bool = False, normalization: str = "auto",
                  threshold: float = uncertainty.DEFAULT_THRESHOLD, window: int = 64,
                  intensity: intensity_lib.Intensity | None = None, settings: dict | None = None,
                  voxel_size=None, log: Callable[[str], None] = print) -> dict:
    """Restores every image of `input_path` into the folder `output`; returns (and writes) the report.

    tile / overlap default to the model's training patch size and a quarter of it (`Restorer.resolve_tiling`).
    intensity: the checkpoint's contract (`intensity.from_meta(loaded.meta)`); normalization: a mode of
    `intensity.prediction_mapping` ('auto' = the contract, or per-image when there is none).
    voxel_size: the input's pixel size (y, x), or (z, y, x) for a stack, in nm, overriding its metadata.
    """
    if task not in ("denoise", "superres"):
        raise ValueError(f"task must be 'denoise' or 'superres', got {task!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples (K) must be >= 1, got {num_samples}")
    tile, overlap = restorer.resolve_tiling(tile, overlap)
    input_path = pathlib.Path(input_path)
    output = io.check_output_folder(output, [input_path])
    items = list_inputs(input_path)
    _check_unique_names(items, input_path)
    for name, load in items:   # every input readable and usable before anything is written
        _load_checked(name, load, input_path, intensity, normalization, harmonize)
    depth = _stack_depth(input_path)
    sizes = _input_voxel_sizes(input_path, [name for name, _ in items])
    if voxel_size is not None:
        sizes = {name: tuple(voxel_size) for name in sizes}
    key = jax.random.key(seed)
    run_settings = {"task": task, "input": str(input_path.resolve()), "input_identity": io.file_identity(input_path),
                    "num_samples": num_samples, "seed": seed, "tile": tile, "overlap": overlap,
                    "tiling": restorer.tiling, "harmonize": harmonize, "threshold": threshold,
                    "reliability_window": window,
                    "normalization": normalization, "save_samples": keep_samples,
                    "voxel_size": None if voxel_size is None else list(voxel_size), **(settings or {})}
    names = [name for name, _ in items]
    finished, done = _open_output(output, names, run_settings, log,
                                  stack=input_path.stem if depth is not None else None)
    if finished is not None:
        return finished
    output.mkdir(parents=True, exist_ok=True)
    progress = {"settings": run_settings, "done": done}
    run_state.write_json(output / PROGRESS, progress)
    stack_parts = output / f".{input_path.stem}_slices"   # per-slice outputs of a stack until it is complete
    if num_samples < 2:
        log("K=1: no uncertainty can be estimated (std, score and reliability need K >= 2)")
    images, start = [], time.perf_counter()
    for index, (name, load) in enumerate(items):
        if name in done:
            images.append(done[name])
            continue
        t0 = time.perf_counter()
        raw, mapping = _load_checked(name, load, input_path, intensity, normalization, harmonize)
        pred = inference.predict_image(restorer, mapping.input_to_model(raw),
                                       jax.random.fold_in(key, index), num_samples=num_samples, tile=tile,
                                       overlap=overlap, harmonize=harmonize, keep_samples=keep_samples,
                                       upscale=2 if task == "superres" else 1, name=f"{input_path} ({name})")
        mean = mapping.output_from_model(pred.mean)
        std = (pred.std / 2.0).astype(np.float32)
        files = {f"{name}_mean.tif": mean, f"{name}_std.tif": std}
        in_size = sizes[name]
        out_size = _output_voxel_size(in_size, task)
        entry = {"name": name, "input_shape": list(raw.shape), "output_shape": list(mean.shape),
                 "dtype": str(raw.dtype), "output_dtype": str(mean.dtype),
                 intensity_lib.META_KEY: mapping.to_dict(), "tiles": pred.num_tiles,
                 "voxel_size_nm": {"input": None if in_size is None else list(in_size),
                                   "output": None if out_size is None else list(out_size)}}
        if depth is not None:
            entry.update(stack=input_path.stem, z=index)
        if num_samples > 1:
            assessment = uncertainty.assess(std, threshold, tile=tile, window=window)
            files[f"{name}_reliability.tif"] = assessment.local_score.astype(np.float32)
            entry.update(assessment.summary())
        else:
            entry.update(score=None, reliable=None, threshold=threshold, tile_scores=None)
        if keep_samples:
            files[f"{name}_samples.tif"] = mapping.output_from_model(pred.samples)
        pixel = None if out_size is None else out_size[-2:]
        for fname, array in files.items():
            in_stack = depth is not None and not fname.endswith("_samples.tif")
            folder = stack_parts if in_stack else output
            folder.mkdir(exist_ok=True)
            _write_atomic(folder / fname, lambda p, a=array: io.write_tiff(
                p, a, axes="ZYX"[-a.ndim:], voxel_size=None if pixel is None else (None,) * (a.ndim - 2) + pixel))
        write_png(output / f"{name}_input.png", to_preview(raw))
        write_png(output / f"{name}_mean.png", to_preview(mean))
        write_png(output / f"{name}_std.png", to_preview(std, 0.0, max(2 * threshold, float(std.max()))))
        if num_samples > 1:
            write_png(output / f"{name}_reliability.png", assessment.reliable_map.astype(np.uint8) * 255)
        entry["seconds"] = time.perf_counter() - t0
        entry["sampling_seconds"] = pred.seconds
        images.append(entry)
        done[name] = entry
        run_state.write_json(output / PROGRESS, progress)
        flag = "" if entry["score"] is None else \
            f", score {entry['score']:.4f} ({'reliable' if entry['reliable'] else 'UNRELIABLE'})"
        log(f"{name}: " + inference.progress_line(index + 1, len(items), time.perf_counter() - start, restorer,
                                                  pred.num_tiles, num_samples)
            + f", this image {entry['seconds']:.1f} s{flag}")
    if depth is not None:   # (sizes, not the loop's out_size: a resumed run may have no image left to do)
        _assemble_stacks(stack_parts, output, input_path.stem, names, _output_voxel_size(sizes[names[-1]], task))
    report = {"settings": run_settings,
              "score_definition": "mean over pixels of the per-pixel std of the K samples, intensities in [0, 1]; "
                                  "flagged unreliable when score > threshold",
              "images": images, "total_seconds": time.perf_counter() - start}
    _write_atomic(output / "report.json", lambda p: p.write_text(json.dumps(report, indent=2)))
    (output / PROGRESS).unlink()
    return report


def _report_mapping(entry: dict) -> intensity_lib.Intensity:
    """The intensity mapping a report entry was written with (reports before the contract: 'normalization',
    one per-image map for input and output)."""
    if intensity_lib.META_KEY in entry:
        return intensity_lib.Intensity.from_dict(entry[intensity_lib.META_KEY])
    return intensity_lib.Intensity.shared(normalize.NormParams.from_dict(entry["normalization"]))


def _assemble_stacks(parts: pathlib.Path, output: pathlib.Path, stem: str, names: list[str], voxel_size) -> None:
    """Per-slice outputs of a stack -> one multi-page TIFF per output kind, then the parts are removed."""
    for kind in ("mean", "std", "reliability"):
        files = [parts / f"{name}_{kind}.tif" for name in names]
        if not files[0].exists():
            continue   # K = 1: no reliability map
        first = io.read_image(files[0])
        _write_atomic(output / f"{stem}_{kind}.tif", lambda p, files=files, first=first: io.write_tiff_stack(
            p, (io.read_image(f) for f in files), (len(files),) + first.shape, first.dtype,
            voxel_size=voxel_size if voxel_size is None or len(voxel_size) == 3 else (None,) + tuple(voxel_size)))
    for f in parts.iterdir():
        f.unlink()
    parts.rmdir()


def _read_output(predictions: pathlib.Path, entry: dict, kind: str) -> np.ndarray:
    """One image's `kind` output: its own file, or its page of the stack's file."""
    if "stack" in entry:
        return io.read_volume(predictions / f"{entry['stack']}_{kind}.tif", lazy=True)[entry["z"]]
    return io.read_image(predictions / f"{entry['name']}_{kind}.tif")


CALIBRATION_UNITS = ("auto", "image", "block")
MIN_IMAGES_AS_UNITS = 20   # 'auto' calibrates on whole images from this many on


def load_calibration_units(predictions: str | os.PathLike, target: str | os.PathLike, unit: str = "auto",
                           block: int = 64, log: Callable[[str], None] = print):
    """Held-out (mean, std, target) in [0, 1] units as (N, h, w) arrays, one row per calibration unit, and
    the unit used ('image' or 'block'), from a predict.py output.

    predictions: the output folder of `restore_files` (needs report.json, <name>_mean.tif, <name>_std.tif,
    i.e. K >= 2); target: the ground-truth image, stack or folder, whose images match the predicted ones by
    name and shape. Prediction and ground truth are both put in [0, 1] units by the output (target) map
    the prediction was written with, the units of the std map.
    unit: 'image' = each whole image is one unit (images must share a shape); 'block' = every image is cut
    into non-overlapping block x block squares (incomplete border squares dropped), each one unit;
    'auto' = 'image' with at least MIN_IMAGES_AS_UNITS images of one shape, else 'block'. RCPS treats the
    units as independent draws: whole held-out images (from different places) come close to that; blocks
    of the same few images do not (neighbouring blocks share structure, noise and model errors), so their
    guarantee is only as good as that assumption, and a warning says so.
    """
    if unit not in CALIBRATION_UNITS:
        raise ValueError(f"calibration unit must be one of {CALIBRATION_UNITS}, got {unit!r}")
    predictions = pathlib.Path(predictions)
    report_path = predictions / "report.json"
    if not report_path.exists():
        raise io.DataError(f"{predictions}: no report.json; pass the output folder of a finished launch/predict.py")
    report = run_state.read_json(report_path, "report", "run launch/predict.py again into a new folder")
    if not isinstance(report.get("images"), list):
        raise io.DataError(f"{report_path}: not a launch/predict.py report (no 'images' list); pass the output "
                           "folder of a finished launch/predict.py")
    entries = {e["name"]: e for e in report["images"]}
    targets = dict(list_inputs(target))
    missing = sorted(set(entries) - set(targets))
    if missing:
        raise io.DataError(f"{target}: no ground truth for predicted images {missing[:5]}; name the targets "
                           "like the inputs given to predict.py")
    images = []
    for name, entry in entries.items():
        if entry.get("score") is None:
            raise io.DataError(f"{predictions}: {name} was predicted with K=1; calibration needs K >= 2")
        mapping = _report_mapping(entry)
        mean = _read_output(predictions, entry, "mean")
        std = _read_output(predictions, entry, "std").astype(np.float64)
        gt = targets[name]()
        if gt.shape != mean.shape:
            raise io.DataError(f"{target} ({name}): ground truth shape {gt.shape} differs from the prediction "
                               f"{mean.shape}")
        images.append((name, mapping.target_to_unit(mean), std, mapping.target_to_unit(gt)))
    shapes = {m.shape for _, m, _, _ in images}
    if unit == "auto":
        unit = "image" if len(images) >= MIN_IMAGES_AS_UNITS and len(shapes) == 1 else "block"
    if unit == "image":
        if len(shapes) > 1:
            raise io.DataError(f"{predictions}: images of different shapes {sorted(shapes)[:3]} cannot be "
                               "calibration units together; crop them to one size or use --unit=block")
        return tuple(np.stack([img[k] for img in images]) for k in (1, 2, 3)) + ("image",)
    log(f"calibrating on {block} px blocks of {len(images)} image(s): RCPS assumes the blocks are independent, "
        "which blocks of the same images are not; the guarantee holds only as far as that is true (calibrate on "
        f"at least {MIN_IMAGES_AS_UNITS} held-out images to use whole images as units)")
    means, stds, gts = [], [], []
    for name, mean, std, gt in images:
        h, w = (mean.shape[0] // block) * block, (mean.shape[1] // block) * block
        if h == 0 or w == 0:
            raise io.DataError(f"{predictions} ({name}): image {mean.shape} smaller than the {block} px block")
        for arr, out in ((mean, means), (std, stds), (gt, gts)):
            out.append(arr[:h, :w].reshape(h // block, block, w // block, block).swapaxes(1, 2)
                       .reshape(-1, block, block))
    return np.concatenate(means), np.concatenate(stds), np.concatenate(gts), "block"
