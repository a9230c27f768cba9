"""Training samples for the four tasks: finding and loading pairs, crops, vEM triplets, lateral views,
held-out splits and augmentation. Pure numpy; randomness only through an explicit Generator.

Conventions: 2D samples are (cond (P, P, 1), target (P, P, 1)); vEM samples are
(cond (P, P, 2) = [later slice, earlier slice], target (P, P, z - 1) = the slices between, increasing z).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from emdiffuse_jax.data import io

TASKS = ("denoise", "superres", "vem_i", "vem_a")
VOLUME_TASKS = ("vem_i", "vem_a")
BLUR_SIGMA = 3.0  # reference augmentation: Gaussian blur of the inputs, sigma 3 px, p = 0.5


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task '{task}' unknown; use one of {TASKS}")
    return task


@dataclasses.dataclass
class ImagePair:
    """One 2D training image: target (clean / high-res) and its input, or input None (made by degrading).

    scale is 2 when the input is the half-resolution image of a super-resolution pair, else 1.
    """

    name: str
    target: np.ndarray
    cond: np.ndarray | None
    scale: int = 1


# ---------------------------------------------------------------------------------------------- listing

def _relative_images(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Images under `folder` (recursively, hidden files skipped) keyed by relative path."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            p = pathlib.Path(root) / f
            if not f.startswith(".") and p.suffix.lower() in io.IMAGE_SUFFIXES:
                found[str(p.relative_to(folder))] = p
    return dict(sorted(found.items(), key=lambda kv: io.natural_key(kv[0])))


def _partner_folder(folder: pathlib.Path) -> pathlib.Path | None:
    """Where the targets of an input folder live: img/ -> gt/, *wf* -> *gt* (that folder name only)."""
    for cand in (folder / "gt", folder / "train_gt"):
        if cand.is_dir():
            return cand
    if folder.name == "img" and (folder.parent / "gt").is_dir():
        return folder.parent / "gt"
    if "wf" in folder.name and (folder.parent / folder.name.replace("wf", "gt")).is_dir():
        return folder.parent / folder.name.replace("wf", "gt")
    return None


def _input_folder(folder: pathlib.Path) -> pathlib.Path:
    for cand in (folder / "img", folder / "train_wf"):
        if cand.is_dir():
            return cand
    return folder


def find_pairs(input_path: str | os.PathLike, target_path: str | os.PathLike | None = None
               ) -> list[tuple[str, pathlib.Path | None, pathlib.Path]]:
    """(name, input file or None, target file) for the supported 2D layouts.

    - two files: `input_path` (noisy / low-res) and `target_path` (clean / high-res);
    - two folders matched by relative path (plain `img/` + `gt/`, or the reference's
      `train_wf/<roi>/<type>/<n>.tif` + `train_gt/...`); `input_path` may also be their parent, or the
      `img` / `*wf*` folder alone when its `gt` / `*gt*` sibling exists. Unlike the reference, only that
      folder's name is rewritten ('wf' in parent folders is left alone);
    - one folder or file of clean images only (no partner found): input None, pairs made by degrading.
    """
    inp = pathlib.Path(input_path)
    if not inp.exists():
        raise io.DataError(f"{inp}: no such file or folder")
    if inp.is_file():
        if target_path is None:
            return [(inp.stem, None, inp)]
        tgt = pathlib.Path(target_path)
        if not tgt.is_file():
            raise io.DataError(f"{tgt}: target must be a file when the input {inp} is a file")
        return [(inp.stem, inp, tgt)]
    if target_path is not None:
        src, tgt = inp, pathlib.Path(target_path)
        if not tgt.is_dir():
            raise io.DataError(f"{tgt}: target must be a folder when the input {inp} is a folder")
    else:
        src = _input_folder(inp)
        tgt = _partner_folder(src)
    inputs = _relative_images(src)
    if not inputs:
        raise io.DataError(f"{src}: no images found (expected .tif, .tiff or .png files)")
    if tgt is None:
        return [(name, None, path) for name, path in inputs.items()]
    targets = _relative_images(tgt)
    missing = [n for n in inputs if n not in targets]
    extra = [n for n in targets if n not in inputs]
    if missing or extra:
        raise io.DataError(
            f"{src} and {tgt} do not pair up: {len(missing)} input(s) without target (e.g. {missing[:3]}), "
            f"{len(extra)} target(s) without input (e.g. {extra[:3]}); inputs and targets need the same "
            "relative file names")
    return [(name, path, targets[name]) for name, path in inputs.items()]


def _images_of(path: pathlib.Path) -> list[tuple[str, np.ndarray]]:
    """A file as 2D images: one for an image, one per slice for a stack."""
    try:
        return [(path.stem, io.read_image(path))]
    except io.DataError as exc:
        if "read_volume" not in str(exc):
            raise
    vol = io.read_volume(path)
    return [(f"{path.stem}[{z}]", vol[z]) for z in range(vol.shape[0])]


def load_pairs(input_path, target_path=None, task: str = "denoise") -> list[ImagePair]:
    """Reads the pairs `find_pairs` lists, checking sizes (super-resolution: input may be half size)."""
    pairs = []
    for name, inp, tgt in find_pairs(input_path, target_path):
        targets = _images_of(tgt)
        inputs = _images_of(inp) if inp is not None else [(n, None) for n, _ in targets]
        if len(inputs) != len(targets):
            raise io.DataError(f"{inp} has {len(inputs)} slices but {tgt} has {len(targets)}; they must match")
        for (iname, a), (tname, b) in zip(inputs, targets):
            scale = 1
            if a is not None and a.shape != b.shape:
                if task == "superres" and tuple(2 * s for s in a.shape) == b.shape:
                    scale = 2
                else:
                    want = "the same size" + (" or half the size" if task == "superres" else "")
                    raise io.DataError(f"{inp} is {a.shape} but {tgt} is {b.shape}: mismatched pair sizes; "
                                       f"inputs must be {want} as their targets (register/crop them first)")
            pairs.append(ImagePair(tname if len(targets) > 1 else name, b, a, scale))
    return pairs


# ---------------------------------------------------------------------------------------------- geometry

def reflect_index(n: int, length: int) -> np.ndarray:
    """Indices 0..length-1 into an axis of size n, mirrored back and forth (n-2, ..., 1, 0, 1, ...)
    when length > n: how short axes are padded by reflection without repeating the edge slice."""
    if n == 1:
        return np.zeros(length, np.int64)
    period = 2 * (n - 1)
    k = np.arange(length) % period
    return np.where(k < n, k, period - k).astype(np.int64)


class TripletVolume:
    """Triplet geometry over a volume: 'slices' are taken along `depth_axis`.

    vem_i: depth = z of an isotropic volume, images are XY slices.
    vem_a: depth = y of an anisotropic volume, images are XZ lateral views with z as rows; when the volume
    has fewer slices than the patch size, the z rows are extended by reflection (see `reflect_index`),
    in place of the reference's advice to duplicate the volume along z.
    """

    def __init__(self, volume: Any, task: str, patch_size: int):
        self.volume = volume
        self.task = task
        z, y, x = volume.shape
        if task == "vem_i":
            self.depth, self.height, self.width = z, y, x
            self.rows = None
        else:
            self.depth, self.width = y, x
            self.height = max(z, patch_size)
            self.rows = reflect_index(z, self.height)
        if self.height < patch_size or self.width < patch_size:
            raise io.DataError(f"{getattr(volume, 'name', 'volume')}: images of {self.height} x {self.width} "
                               f"are smaller than the patch size {patch_size}")

    def slab(self, first: int, count: int, y: int, x: int, size: int) -> np.ndarray:
        """`count` consecutive depth slices from `first`, cropped at (y, x): (count, size, size), raw dtype."""
        if self.task == "vem_i":
            return np.asarray(self.volume[first:first + count, y:y + size, x:x + size])
        rows = self.rows[y:y + size]
        zs, inverse = np.unique(rows, return_inverse=True)
        block = np.asarray(self.volume[zs, first:first + count, x:x + size])[inverse]  # (size, count, size)
        return np.transpose(block, (1, 0, 2))


def triplet_from_slab(slab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z+1, H, W) consecutive slices -> cond (H, W, 2) [later, earlier], target (H, W, z-1)."""
    cond = np.stack([slab[-1], slab[0]], axis=-1)
    target = np.moveaxis(slab[1:-1], 0, -1)
    return cond, target


def holdout_range(length: int, fraction: float, minimum: int, need: int, what: str) -> tuple[int, int]:
    """Split [0, length) into train [0, cut) and validation [cut, length) along one axis.

    The validation block has at least `minimum` and about `fraction` of the length; the training block
    must keep at least `need`. fraction 0 keeps everything for training.
    """
    if fraction <= 0:
        return length, length
    held = max(minimum, int(round(fraction * length)))
    cut = length - held
    if cut < need:
        raise io.DataError(f"{what}: {length} is too small to hold out {held} for validation and keep {need} "
                           "for training; give more data or set val_fraction=0")
    return cut, length


# ---------------------------------------------------------------------------------------------- augment

def augment(cond: np.ndarray, target: np.ndarray, rng: np.random.Generator, *, blur_channels: Sequence[int],
            p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Reference augmentations, each with probability p: Gaussian blur (sigma 3) of each input channel in
    `blur_channels` independently, vertical flip of everything, rot90 (counter-clockwise) of everything."""
    draws = rng.random(len(blur_channels) + 2)
    for c, d in zip(blur_channels, draws):
        if d < p:
            cond = cond.copy() if not cond.flags.writeable else cond
            cond[..., c] = ndimage.gaussian_filter(cond[..., c], BLUR_SIGMA, mode="reflect", truncate=3.0)
    if draws[-2] < p:
        cond, target = cond[::-1], target[::-1]
    if draws[-1] < p:
        cond, target = np.rot90(cond), np.rot90(target)
    return np.ascontiguousarray(cond), np.ascontiguousarray(target)
