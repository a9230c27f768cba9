"""Per-host training input pipeline whose batches are a pure function of (seed, step, process).

`build_train_source(task, input_path, target_path, ...)` returns a `TrainSource`;
`source.batch(seed, step, process_index, process_count, global_batch)` gives this process's share of the
global batch: {"cond": (b, P, P, Cc), "target": (b, P, P, Ct)} float32 in [-1, 1], b = global_batch //
process_count. Every sample is drawn from its own generator keyed by (seed, step, global slot, split), so
the global batch does not depend on the number of processes, processes get disjoint slots, and a
resumed or rescaled job sees exactly the batches it would have seen. No iterator state to checkpoint.

Sources: built-in phantoms (input_path None), images / image pairs / stacks / volumes on disk (see
`samples.find_pairs` and `io.read_volume`), or a dataset written by `launch/prepare.py`. Validation is
held out by whole images (2D, several images), by a strip of the image (one image), or by a slab of
the volume along the triplet axis (vEM) - never by random patches of the training images.
"""

from __future__ import annotations

import collections
import functools
import pathlib
from typing import Callable

import numpy as np

from emdiffuse_jax.data import degrade as degrade_lib
from emdiffuse_jax.data import intensity as intensity_lib
from emdiffuse_jax.data import io, samples
from emdiffuse_jax.data.intensity import Intensity
from emdiffuse_jax.data.phantom import phantom

SPLITS = ("train", "validation")
_SPLIT_TAG = {"train": 0, "validation": 1}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x + 1.0) * 0.5


class TrainSource:
    """A sampler plus the bookkeeping the trainer needs (channels, num_examples, intensity contract).

    `intensity` is the dataset-level contract (data.intensity) every sample was mapped with, fitted on the
    training split and shared by the validation split; None only for prepared datasets written before
    the contract existed (their examples carry per-image bounds).
    """

    def __init__(self, task: str, split: str, patch_size: int, channels: tuple[int, int],
                 num_examples: int,
                 draw: Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]],
                 blur_channels: tuple[int, ...], intensity: Intensity | None, description: str):
        self.task = task
        self.split = split
        self.patch_size = patch_size
        self.channels = channels
        self.num_examples = num_examples
        self.intensity = intensity
        self.description = description
        self._draw = draw
        self._blur_channels = blur_channels

    def __repr__(self) -> str:
        return (f"TrainSource({self.task}, {self.split}, patch {self.patch_size}, channels {self.channels}, "
                f"{self.num_examples} examples: {self.description})")

    def example(self, seed: int, step: int, slot: int, global_batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Global sample `slot` of batch `step`: (cond (P, P, Cc), target (P, P, Ct)) float32.

        Random crops depend on (seed, step, slot) only; prepared datasets walk a per-epoch permutation by
        the global sample number step * global_batch + slot. A half-resolution super-resolution input is
        upsampled x2 here, after the augmentation's blur (the reference blurs at the low resolution).
        """
        seed = int(seed) % (1 << 63)  # numpy seeds must be non-negative (the reference's default is -1)
        rng = np.random.default_rng([seed, int(step), int(slot), _SPLIT_TAG[self.split]])
        cond, target = self._draw(rng, seed, int(step) * int(global_batch) + int(slot))
        # Bounds fitted on a subset of a large volume (minmax) may leave a few values just outside.
        cond, target = np.clip(cond, -1.0, 1.0), np.clip(target, -1.0, 1.0)
        if self.split == "train":
            cond, target = samples.augment(cond, target, rng, blur_channels=self._blur_channels)
        elif cond.shape[0] != target.shape[0]:
            cond = degrade_lib.upsample2_bilinear(cond).astype(np.float32)
        return cond, target

    def batch(self, seed: int, step: int, process_index: int = 0, process_count: int = 1,
              global_batch: int = 1) -> dict[str, np.ndarray]:
        """This process's slots [i b, (i + 1) b) of the global batch, b = global_batch // process_count."""
        if global_batch % process_count:
            raise ValueError(f"global_batch {global_batch} is not divisible by process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        b = global_batch // process_count
        conds, targets = zip(*(self.example(seed, step, process_index * b + i, global_batch) for i in range(b)))
        return {"cond": np.stack(conds).astype(np.float32, copy=False),
                "target": np.stack(targets).astype(np.float32, copy=False)}


# ---------------------------------------------------------------------------------------------- 2D pairs

def fit_pairs(pairs: list[samples.ImagePair], regions, mode: str | None) -> Intensity:
    """The contract of 2D pairs, fitted on the training regions (targets; inputs where acquired)."""
    targets = [pairs[i].target[y0:y1, x0:x1] for i, y0, y1, x0, x1 in regions]
    inputs = [pairs[i].cond[y0 // pairs[i].scale:y1 // pairs[i].scale, x0 // pairs[i].scale:x1 // pairs[i].scale]
              for i, y0, y1, x0, x1 in regions if pairs[i].cond is not None]
    return intensity_lib.fit(targets, inputs, mode)


def _pair_source(task, pairs: list[samples.ImagePair], split, patch_size, val_fraction, normalization,
                 degrade_spec, description, contract: Intensity | None) -> TrainSource:
    p = patch_size
    if task == "superres" and p % 2:
        raise ValueError(f"super-resolution needs an even patch size, got {p}")
    if not pairs:
        raise io.DataError(f"{description}: no images")
    pairs = samples.pad_pairs(pairs, p)
    regions = samples.split_regions([q.target.shape for q in pairs], split, p, val_fraction, description,
                                    align=2 if task == "superres" else 1)
    used = sorted({r[0] for r in regions})
    if contract is None:
        train_regions = regions if split == "train" else samples.split_regions(
            [q.target.shape for q in pairs], "train", p, val_fraction, description,
            align=2 if task == "superres" else 1)
        try:
            contract = fit_pairs(pairs, train_regions, normalization)
        except ValueError as err:
            raise io.DataError(f"{description}: {err}") from err
    degrade = None
    if any(pairs[i].cond is None for i in used):
        degrade = degrade_lib.parse_degradation(degrade_spec, task)
    weights = np.array([(y1 - y0 - p + 1) * (x1 - x0 - p + 1) for _, y0, y1, x0, x1 in regions], np.float64)
    cum = np.cumsum(weights) / weights.sum()

    def draw(rng, seed, index):
        r = regions[min(int(np.searchsorted(cum, rng.random(), side="right")), len(regions) - 1)]
        i, y0, y1, x0, x1 = r
        pair = pairs[i]
        y = int(rng.integers(y0, y1 - p + 1))
        x = int(rng.integers(x0, x1 - p + 1))
        if pair.scale == 2:
            y, x = y - y % 2, x - x % 2
        target = contract.target_to_model(pair.target[y:y + p, x:x + p])
        if pair.cond is None:  # degraded in target units (the input map is the target map)
            cond = degrade(_unit(target.astype(np.float64)), rng) * 2.0 - 1.0
        elif pair.scale == 2:
            h = p // 2
            cond = contract.input_to_model(pair.cond[y // 2:y // 2 + h, x // 2:x // 2 + h])
        else:
            cond = contract.input_to_model(pair.cond[y:y + p, x:x + p])
        return cond[..., None].astype(np.float32), target[..., None]  # half-size inputs upsampled by example()

    num = int(sum(((y1 - y0) // p) * ((x1 - x0) // p) for _, y0, y1, x0, x1 in regions))
    return TrainSource(task, split, p, (1, 1), num, draw, (0,), contract, description)


# ---------------------------------------------------------------------------------------------- volumes

def _volume_source(task, volume, split, patch_size, z_factor, val_fraction, normalization,
                   description, section_thickness=1, contract: Intensity | None = None) -> TrainSource:
    if z_factor is None or z_factor < 2:
        raise ValueError(f"{task} needs z_factor >= 2 (slices generated between two inputs + 1), got {z_factor}")
    p, z = patch_size, int(z_factor)
    geo = samples.TripletVolume(volume, task, p)
    axis = "z" if task == "vem_i" else "y (lateral)"
    cut, end = samples.holdout_range(geo.depth, val_fraction, z + 1, z + 1,
                                     f"{description}: {axis} extent")
    d0, d1 = (0, cut) if split == "train" else (cut, end)
    if d1 - d0 < z + 1:
        raise io.DataError(f"{description}: the {split} part has {d1 - d0} slices along {axis}; "
                           f"a triplet for z_factor {z} needs {z + 1}")
    if contract is None:  # inputs and targets are slices of one volume: one map, fitted on all of it
        try:
            contract = Intensity.shared(intensity_lib.fit_pooled([volume], normalization or
                                                                 intensity_lib.default_mode([volume.dtype])))
        except ValueError as err:
            raise io.DataError(f"{description}: {err}") from err

    def draw(rng, seed, index):
        first = int(rng.integers(d0, d1 - z))  # inclusive of the last slice (reference bug 12 fixed)
        y = int(rng.integers(0, geo.height - p + 1))
        x = int(rng.integers(0, geo.width - p + 1))
        cond, target = samples.triplet(geo, first, z, y, x, p, section_thickness, (d0, d1))
        return contract.input_to_model(cond), contract.target_to_model(target)

    num = (d1 - d0 - z) * (geo.height // p) * (geo.width // p)
    return TrainSource(task, split, p, (2, z - 1), num, draw, (0, 1), contract, description)


# ---------------------------------------------------------------------------------------------- prepared

def _prepared_source(task, path: pathlib.Path, split, patch_size, z_factor) -> TrainSource:
    from emdiffuse_jax.data import tfds_builder

    ds, info = tfds_builder.open_prepared(path, split)
    if info["task"] != task:
        raise io.DataError(f"{path}: prepared for task '{info['task']}', not '{task}'")
    if patch_size is not None and info["patch_size"] != patch_size:
        raise io.DataError(f"{path}: prepared with patch size {info['patch_size']}, not {patch_size}; "
                           "prepare it again or use its patch size")
    if z_factor is not None and task in samples.VOLUME_TASKS and info["z_factor"] != z_factor:
        raise io.DataError(f"{path}: prepared with z_factor {info['z_factor']}, not {z_factor}")
    n = len(ds)
    if n == 0:
        raise io.DataError(f"{path}: split '{split}' is empty")

    @functools.lru_cache(maxsize=2)
    def permutation(seed, epoch):
        return np.random.default_rng([seed, epoch, 7]).permutation(n)

    def draw(rng, seed, index):  # epoch-wise shuffles: every example once per epoch
        return tfds_builder.decode_example(ds[int(permutation(int(seed), index // n)[index % n])], task,
                                           upsample=False)

    blur = (0, 1) if task in samples.VOLUME_TASKS else (0,)
    stored = info.get(intensity_lib.META_KEY)
    return TrainSource(task, split, info["patch_size"], tuple(info["channels"]), n, draw, blur,
                       Intensity.from_dict(stored) if stored else None, f"prepared dataset {path}")


# ---------------------------------------------------------------------------------------------- builtin

@functools.lru_cache(maxsize=8)
def _phantom_cached(shape, seed, voxel_size=None):
    out = phantom(shape, seed=seed, voxel_size=voxel_size)
    out.setflags(write=False)
    return out


def synthetic_pairs(task: str, patch_size: int, count: int = 4) -> list[samples.ImagePair]:
    """Built-in 2D data: `count` clean phantom images of 2 x patch size (inputs made by degrading)."""
    size = 2 * patch_size
    return [samples.ImagePair(f"phantom{i}", _phantom_cached((size, size), 1000 + i), None) for i in range(count)]


def synthetic_volume(task: str, patch_size: int, z_factor: int) -> np.ndarray:
    """Built-in volume: isotropic for vem_i; for vem_a anisotropic (sections z_factor pixels thick) with
    fewer slices than the patch size, as real anisotropic stacks often have."""
    side = patch_size + patch_size // 4
    if task == "vem_i":
        depth = max(8 * (z_factor + 1), 32)
        return _phantom_cached((depth, side, side), 2000)
    depth = max(patch_size // 8, 4)
    return _phantom_cached((depth, max(side, 10 * (z_factor + 1)), side), 3000, (float(z_factor), 1.0, 1.0))


# ---------------------------------------------------------------------------------------------- entry

def is_prepared(path: str | pathlib.Path | None) -> bool:
    if path is None:
        return False
    from emdiffuse_jax.data import tfds_builder

    return tfds_builder.find_prepared(pathlib.Path(path)) is not None


def build_train_source(task: str, input_path=None, target_path=None, *, patch_size: int | None,
                       z_factor: int | None = None, split: str = "train", val_fraction: float = 0.1,
                       normalization: str | None = None, seed: int = 0, degrade: str | None = None,
                       lazy: bool | None = None, section_thickness: int = 1,
                       intensity: Intensity | None = None) -> TrainSource:
    """The training (or held-out validation) sample source for `task`.

    input_path: None = built-in phantoms; a dataset from launch/prepare.py (patch_size None = its own);
    2D tasks: an image, a stack,
    or a folder (with target_path, or an img/+gt/ or train_wf/+train_gt/ layout; clean images alone get
    inputs by the `degrade` spec, see degrade.parse_degradation); vEM tasks: a volume (TIFF stack, slice
    folder, Zarr, N5) - isotropic for vem_i, anisotropic for vem_a.
    normalization: 'uint8' | 'minmax' | 'percentile' | None (uint8 data -> 'uint8', else 'percentile'):
    the mode of the intensity contract (data.intensity), fitted once on the training split of all images
    (2D: targets and acquired inputs separately) or on the volume (vEM). intensity: a contract to use
    instead of fitting one (the training source's, for validation; a resumed checkpoint's); prepared
    datasets always use their own. lazy: read volumes slice by slice (True), into memory (False), or by
    size (None: lazy above 1 GiB). section_thickness (vEM): conditioning slices are the mean of that many
    slices (see samples.triplet).
    `seed` is accepted for symmetry with `batch`; the split itself never depends on it.
    """
    samples.check_task(task)
    if split not in SPLITS:
        raise ValueError(f"split '{split}' unknown; use one of {SPLITS}")
    del seed  # the split is seed-independent so train/validation stay disjoint across runs
    if input_path is not None and is_prepared(input_path):
        return _prepared_source(task, pathlib.Path(input_path), split, patch_size, z_factor)
    if not patch_size or patch_size < 2:
        raise ValueError(f"patch_size must be given (>= 2) unless the input is a prepared dataset, got {patch_size}")
    if task in samples.VOLUME_TASKS:
        if target_path is not None:
            raise ValueError(f"{task} takes one volume; target_path must be None")
        if input_path is None:
            volume, desc = synthetic_volume(task, patch_size, z_factor or 0), "built-in phantom volume"
        else:
            volume, desc = io.read_volume(input_path, lazy=lazy), str(input_path)
        return _volume_source(task, volume, split, patch_size, z_factor, val_fraction, normalization, desc,
                              section_thickness, intensity)
    if input_path is None:
        pairs, desc = synthetic_pairs(task, patch_size), "built-in phantom images"
    else:
        pairs, desc = samples.load_pairs(input_path, target_path, task), str(input_path)
    return _pair_source(task, pairs, split, patch_size, val_fraction, normalization, degrade, desc, intensity)


def iterate_batches(source: TrainSource, seed: int, start_step: int = 0, *, process_index: int = 0,
                    process_count: int = 1, global_batch: int = 1, prefetch: int = 2, threads: int = 1):
    """Yields (step, batch) from `start_step` on, building up to `prefetch` batches ahead in background
    threads (numpy and scipy release the GIL for most of the work). Same batches as `source.batch`."""
    from concurrent.futures import ThreadPoolExecutor

    def make(step):
        return source.batch(seed, step, process_index, process_count, global_batch)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending = collections.deque(pool.submit(make, s) for s in range(start_step, start_step + prefetch + 1))
        step = start_step
        while True:
            batch = pending.popleft().result()
            pending.append(pool.submit(make, step + prefetch + 1))
            yield step, batch
            step += 1
