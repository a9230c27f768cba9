"""Turns raw data into a prepared dataset (TFDS array_record) of training patches for one task.

2D tasks: every image (or pair) is cut into overlapping patches that cover it completely; acquired pairs
are registered first (see register.py) and pairs or patches that cannot be used are rejected with a
reason; clean images alone get inputs from a degradation model. vEM tasks: every triplet position
(first slice, tile) in the volume. Validation is held out as in the pipeline (whole images, a strip
of a single image, or a slab along the triplet axis). Called by launch/prepare.py.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import sys
import time
from typing import Iterator

import numpy as np

from emdiffuse_jax.data import degrade as degrade_lib
from emdiffuse_jax.data import intensity as intensity_lib
from emdiffuse_jax.data import io, samples, tfds_builder
from emdiffuse_jax.data.normalize import apply_normalization, denormalize
from emdiffuse_jax.data.pipeline import fit_pairs, synthetic_pairs, synthetic_volume
from emdiffuse_jax.data.register import register_pair, register_superres
from emdiffuse_jax.data.tiling import axis_origins


MAX_INVALID = 0.05  # fraction of a registered patch allowed outside the moving image (edge-extended)


class Progress:
    """A one-line text progress bar on stderr: count, rate and an estimated time left."""

    def __init__(self, total: int, desc: str, stream=None, width: int = 30):
        self.total, self.desc, self.width = max(int(total), 1), desc, width
        self.stream = stream or sys.stderr
        self.count, self.start, self._last = 0, time.time(), 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.time()
        if now - self._last >= 0.2 or self.count >= self.total:
            self._last = now
            rate = self.count / max(now - self.start, 1e-9)
            left = (self.total - self.count) / rate if rate > 0 else 0.0
            done = int(self.width * min(self.count / self.total, 1.0))
            self.stream.write(f"\r{self.desc} [{'#' * done}{'.' * (self.width - done)}] {self.count}/{self.total}"
                              f" {rate:.1f}/s, {left:.0f}s left ")
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


@dataclasses.dataclass
class PrepareSummary:
    """What `prepare_dataset` wrote and skipped."""

    path: pathlib.Path
    task: str
    counts: dict
    rejected: dict
    seconds: float
    metadata: dict

    def text(self) -> str:
        lines = [f"prepared {self.task} dataset: {self.path}",
                 "  examples: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()),
                 f"  rejected: {sum(self.rejected.values())}"]
        lines += [f"    {n} x {reason}" for reason, n in sorted(self.rejected.items(), key=lambda kv: -kv[1])]
        lines.append(f"  time: {self.seconds:.1f} s")
        return "\n".join(lines)


def _cast_like(x: np.ndarray, dtype) -> np.ndarray:
    """Resampled floats back to the source dtype (rounded and clipped for integers)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _pair_examples(pairs, patch, overlap, regions, contract, degrade, seed, register, min_std,
                   rejected, progress, registrations: dict) -> Iterator[dict]:
    tnorm, cnorm = contract.target, contract.input
    for i, y0, y1, x0, x1 in regions:
        pair = pairs[i]
        cond_img, valid = pair.cond, None
        if cond_img is not None and register:
            if i not in registrations:  # one image may feed both splits (train part, held-out strip)
                fn = register_superres if pair.scale == 2 else register_pair
                registrations[i] = fn(cond_img.astype(np.float64), pair.target.astype(np.float64))
            reg = registrations[i]
            if not reg.ok:
                n_tiles = len(axis_origins(y1 - y0, patch, overlap)) * len(axis_origins(x1 - x0, patch, overlap))
                rejected[f"pair not registered: {reg.reason}"] += n_tiles
                progress.update(n_tiles)
                continue
            cond_img = _cast_like(reg.aligned, pair.cond.dtype)
            valid = reg.valid
        for ty in axis_origins(y1 - y0, patch, overlap) + y0:
            for tx in axis_origins(x1 - x0, patch, overlap) + x0:
                progress.update()
                y, x = (int(ty) - int(ty) % pair.scale, int(tx) - int(tx) % pair.scale)
                target = pair.target[y:y + patch, x:x + patch]
                if apply_normalization(target, tnorm).std() < min_std:
                    rejected[f"blank patch (target std < {min_std})"] += 1
                    continue
                s, h = pair.scale, patch // pair.scale
                if cond_img is None:
                    rng = np.random.default_rng([seed, i, y, x])
                    unit = (apply_normalization(target, tnorm).astype(np.float64) + 1) / 2
                    cond = denormalize(degrade(unit, rng) * 2 - 1, tnorm)
                    cparams = tnorm
                else:
                    if valid is not None and valid[y // s:y // s + h, x // s:x // s + h].mean() < 1 - MAX_INVALID:
                        rejected[f"over {MAX_INVALID:.0%} outside the registered overlap"] += 1
                        continue
                    cond = cond_img[y // s:y // s + h, x // s:x // s + h]
                    cparams = cnorm
                yield {"cond": cond[..., None], "target": target[..., None],
                       "cond_lo": cparams.lo, "cond_hi": cparams.hi, "target_lo": tnorm.lo, "target_hi": tnorm.hi,
                       "clip": tnorm.clip, "name": f"{pair.name}@{y},{x}"}


def _volume_examples(geo, z, patch, overlap, d0, d1, z_stride, thickness, norm, min_std, rejected, progress):
    for first in range(d0, d1 - z, z_stride):
        for y in axis_origins(geo.height, patch, overlap):
            for x in axis_origins(geo.width, patch, overlap):
                progress.update()
                cond, target = samples.triplet(geo, first, z, int(y), int(x), patch, thickness, (d0, d1))
                if apply_normalization(target, norm).std() < min_std:
                    rejected[f"blank patch (target std < {min_std})"] += 1
                    continue
                yield {"cond": cond, "target": target, "cond_lo": norm.lo, "cond_hi": norm.hi,
                       "target_lo": norm.lo, "target_hi": norm.hi, "clip": norm.clip,
                       "name": f"d{first}@{int(y)},{int(x)}"}


def check_options(task: str, *, patch_size: int, z_factor: int | None, degrade: str | None, overlap: float,
                  val_fraction: float, z_stride: int, section_thickness: int) -> None:
    """Every option of `prepare_dataset` in range, checked before anything is read (ValueError naming the
    option and the fix)."""
    samples.check_task(task)
    if not isinstance(patch_size, (int, np.integer)) or patch_size < 8:
        raise ValueError(f"patch_size must be an integer >= 8 pixels, got {patch_size}")
    if task == "superres" and patch_size % 2:
        raise ValueError(f"super-resolution needs an even patch_size (inputs are half size), got {patch_size}")
    if not (0 <= overlap < 1 or 1 <= overlap < patch_size):
        raise ValueError(f"overlap must be a fraction in [0, 1) or pixels in [1, patch_size {patch_size}), "
                         f"got {overlap}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1) (0 = no validation split), got {val_fraction}")
    if task in samples.VOLUME_TASKS:
        if z_factor is None or z_factor < 2:
            raise ValueError(f"{task} needs z_factor >= 2 (set --z_factor, the axial factor: z - 1 slices are "
                             f"generated between two input slices), got {z_factor}")
        if z_stride < 1 or section_thickness < 1:
            raise ValueError(f"z_stride and section_thickness must be >= 1, got {z_stride} and {section_thickness}")
        if degrade:
            raise ValueError(f"degrade applies to clean 2D images only; {task} learns from the volume itself "
                             "- drop --degrade")
    elif degrade:
        degrade_lib.parse_degradation(degrade, task)  # unknown steps or keys fail here, not after reading


def prepare_dataset(task: str, input_path=None, target_path=None, *, output, patch_size: int = 256,
                    z_factor: int | None = None, degrade: str | None = None, overlap: float = 0.125,
                    normalization: str | None = None, val_fraction: float = 0.1, register: bool = True,
                    z_stride: int = 1, section_thickness: int = 1, min_std: float = 0.02, seed: int = 0,
                    show_progress: bool = True, stream=None) -> PrepareSummary:
    """Writes the train and validation splits for `task` under `output` and returns a summary.

    input_path None uses the built-in phantoms. See launch/prepare.py for the meaning of each option.
    """
    check_options(task, patch_size=patch_size, z_factor=z_factor, degrade=degrade, overlap=overlap,
                  val_fraction=val_fraction, z_stride=z_stride, section_thickness=section_thickness)
    io.check_output_folder(output, [input_path, target_path])
    start = time.time()
    rejected: collections.Counter = collections.Counter()
    stream = stream or sys.stderr
    p = int(patch_size)
    meta = {"task": task, "patch_size": p, "z_factor": z_factor, "overlap": overlap, "seed": seed,
            "source": str(input_path) if input_path is not None else "built-in phantoms",
            "target": str(target_path) if target_path is not None else None}
    if task in samples.VOLUME_TASKS:
        z = int(z_factor)
        volume = synthetic_volume(task, p, z) if input_path is None else io.read_volume(input_path, lazy=None)
        geo = samples.TripletVolume(volume, task, p)
        cut, end = samples.holdout_range(geo.depth, val_fraction, z + 1, z + 1, f"{meta['source']}: depth")
        contract = intensity_lib.Intensity.shared(intensity_lib.fit_pooled(
            [volume], normalization or intensity_lib.default_mode([volume.dtype])))
        norm = contract.target
        ranges = {"train": (0, cut), "validation": (cut, end)} if cut < end else {"train": (0, cut)}
        tiles = len(axis_origins(geo.height, p, overlap)) * len(axis_origins(geo.width, p, overlap))
        total = sum(len(range(a, b - z, z_stride)) for a, b in ranges.values()) * tiles
        progress = Progress(total, f"{task}", stream) if show_progress else _Silent()
        splits = {name: (lambda a=a, b=b: _volume_examples(geo, z, p, overlap, a, b, z_stride, section_thickness,
                                                          norm, min_std, rejected, progress))
                  for name, (a, b) in ranges.items()}
        cond_shape, target_shape, dtype = (p, p, 2), (p, p, z - 1), volume.dtype
        meta.update(channels=[2, z - 1], normalization=norm.mode, degrade=None,
                    section_thickness=section_thickness)
    else:
        pairs = synthetic_pairs(task, p) if input_path is None else samples.load_pairs(input_path, target_path, task)
        pairs = samples.pad_pairs(pairs, p)
        scales = {q.scale for q in pairs}
        has_cond = {q.cond is not None for q in pairs}
        if len(scales) > 1 or len(has_cond) > 1:
            raise io.DataError(f"{meta['source']}: mixes image pairs of different kinds (same-size and half-size "
                               "inputs, or with and without inputs); prepare them separately")
        if True in has_cond and degrade:
            raise io.DataError(f"{meta['source']}: holds acquired input/target pairs, so --degrade (for clean "
                               "images only) would be ignored; drop --degrade or pass only the clean images")
        deg = None if True in has_cond else degrade_lib.parse_degradation(degrade, task)
        shapes = [q.target.shape for q in pairs]
        align = 2 if task == "superres" else 1
        split_regions = {"train": samples.split_regions(shapes, "train", p, val_fraction, meta["source"], align)}
        if val_fraction > 0:
            split_regions["validation"] = samples.split_regions(shapes, "validation", p, val_fraction,
                                                                meta["source"], align)
        contract = fit_pairs(pairs, split_regions["train"], normalization)
        mode = contract.target.mode
        total = sum(len(axis_origins(y1 - y0, p, overlap)) * len(axis_origins(x1 - x0, p, overlap))
                    for regions in split_regions.values() for _, y0, y1, x0, x1 in regions)
        progress = Progress(total, f"{task}", stream) if show_progress else _Silent()
        registrations: dict = {}
        splits = {name: (lambda regions=regions: _pair_examples(pairs, p, overlap, regions, contract, deg, seed,
                                                                register, min_std, rejected, progress,
                                                                registrations))
                  for name, regions in split_regions.items()}
        half = pairs[0].scale == 2 or (deg is not None and task == "superres")
        cond_shape, target_shape = ((p // 2 if half else p), (p // 2 if half else p), 1), (p, p, 1)
        dtype = pairs[0].target.dtype
        if any(q.target.dtype != dtype or (q.cond is not None and q.cond.dtype != dtype) for q in pairs):
            raise io.DataError(f"{meta['source']}: images have different dtypes; convert them to one")
        meta.update(channels=[1, 1], normalization=mode, degrade=getattr(deg, "spec", None))
    meta[intensity_lib.META_KEY] = contract.to_dict()
    splits = {name: (lambda make=make, name=name: _nonempty(make(), name, meta["source"], rejected))
              for name, make in splits.items()}
    version_dir = tfds_builder.write_prepared(output, cond_shape=cond_shape, target_shape=target_shape,
                                              dtype=dtype, splits=splits, metadata=meta)
    progress.close()
    counts = {}
    for name in splits:
        source, _ = tfds_builder.open_prepared(version_dir, name)
        counts[name] = len(source)
    summary = PrepareSummary(version_dir, task, counts, dict(rejected), time.time() - start, meta)
    (version_dir / "prepare_summary.json").write_text(json.dumps(
        {"counts": counts, "rejected": dict(rejected), "seconds": summary.seconds, "metadata": meta}, indent=2))
    return summary


def _nonempty(examples: Iterator[dict], split: str, source: str, rejected: collections.Counter) -> Iterator[dict]:
    """Passes examples through; a split that ends up empty is an error that says why."""
    count = 0
    for example in examples:
        count += 1
        yield example
    if count == 0:
        reasons = "; ".join(f"{n} x {r}" for r, n in rejected.most_common()) or "no patches fit"
        raise io.DataError(f"{source}: no usable patches for the {split} split (rejected: {reasons}); check the "
                           "pairs, lower --val_fraction, or try --register=false for pre-aligned pairs")


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
