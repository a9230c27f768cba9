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
from emdiffuse_jax.data.degrade import upsample2_bilinear

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


def pad_pairs(pairs: list[ImagePair], patch: int) -> list[ImagePair]:
    """Pairs whose images are smaller than a patch, extended by mirror reflection up to the patch size
    (half of it for half-resolution inputs), like tiles of small images in tiling.py."""
    from emdiffuse_jax.data.tiling import pad_to

    out = []
    for q in pairs:
        h, w = q.target.shape
        if h >= patch and w >= patch:
            out.append(q)
            continue
        size = (max(h, patch), max(w, patch))
        cond = None if q.cond is None else pad_to(q.cond, (size[0] // q.scale, size[1] // q.scale))
        out.append(ImagePair(q.name, pad_to(q.target, size), cond, q.scale))
    return out


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
    """Triplet geometry over a (Z, Y, X) volume (numpy or lazy): 'slices' are taken along the depth axis.

    vem_i: depth = z of an isotropic volume, images are XY slices.
    vem_a: depth = y of an anisotropic volume, images are XZ lateral views with z as rows.
    Images smaller than the patch are extended by reflection (`reflect_index`); for vem_a this is what
    makes volumes with fewer slices than the patch size usable, in place of the reference's advice to
    duplicate the volume along z.
    """

    def __init__(self, volume: Any, task: str, patch_size: int):
        self.volume = volume
        self.task = task
        z, y, x = volume.shape
        self.depth, h, w = (z, y, x) if task == "vem_i" else (y, z, x)
        self.height, self.width = max(h, patch_size), max(w, patch_size)
        self.rows = reflect_index(h, self.height)
        self.cols = reflect_index(w, self.width)

    def slab(self, first: int, count: int, y: int, x: int, size: int) -> np.ndarray:
        """`count` consecutive depth slices from `first`, cropped at (y, x): (count, size, size), raw dtype."""
        rows, cols = self.rows[y:y + size], self.cols[x:x + size]
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        if self.task == "vem_i":
            block = np.asarray(self.volume[first:first + count, r0:r1, c0:c1])
        else:  # read (rows, depth, cols) and put depth first
            block = np.transpose(np.asarray(self.volume[r0:r1, first:first + count, c0:c1]), (1, 0, 2))
        return block[:, rows - r0][:, :, cols - c0]


def _section(geo: "TripletVolume", center: int, thickness: int, y: int, x: int, size: int,
             bounds: tuple[int, int]) -> np.ndarray:
    """Mean of `thickness` slices centred on `center`, mirrored at the ends of `bounds` (so a held-out
    slab never reads the other split), in the source dtype."""
    lo_b, hi_b = bounds
    idx = center - lo_b + np.arange(thickness) - (thickness - 1) // 2
    n = hi_b - lo_b
    idx = np.abs(idx)
    idx = np.clip(np.where(idx >= n, 2 * (n - 1) - idx, idx), 0, n - 1) + lo_b
    lo, hi = int(idx.min()), int(idx.max()) + 1
    block = geo.slab(lo, hi - lo, y, x, size)[idx - lo].astype(np.float64).mean(axis=0)
    dtype = np.dtype(geo.volume.dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(block), info.min, info.max).astype(dtype)
    return block.astype(dtype)


def triplet(geo: "TripletVolume", first: int, z: int, y: int, x: int, size: int, thickness: int = 1,
            bounds: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The sample whose earlier slice is `first`: cond (size, size, 2) [later, earlier] and target
    (size, size, z-1), source dtype. thickness > 1 makes each conditioning slice the mean of that many
    slices around it (degrade.z_subsample's section-thickness model, mirrored inside `bounds`, default
    the whole depth), so that a model trained on an isotropic volume sees inputs like physical
    sections; targets stay thin."""
    cond, target = triplet_from_slab(geo.slab(first, z + 1, y, x, size))
    if thickness > 1:
        bounds = bounds or (0, geo.depth)
        cond = np.stack([_section(geo, first + z, thickness, y, x, size, bounds),
                         _section(geo, first, thickness, y, x, size, bounds)], axis=-1)
    return cond, target


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


def split_regions(shapes: Sequence[tuple[int, int]], split: str, patch: int, val_fraction: float,
                  what: str, align: int = 1) -> list[tuple[int, int, int, int, int]]:
    """Held-out split of 2D images as regions (image index, y0, y1, x0, x1) that patches lie inside.

    Several images: validation = the last round(val_fraction * n) images (at least 1) in natural order,
    which for the slices of a stack is a slab, not a random subset of neighbours. One image: validation
    = a strip at the end of its longer axis (at least one patch). `align` keeps the cut a multiple of it.
    """
    if len(shapes) > 1 or val_fraction <= 0:
        n_val = 0 if val_fraction <= 0 else max(1, int(round(val_fraction * len(shapes))))
        if n_val >= len(shapes):
            raise io.DataError(f"{what}: {len(shapes)} images cannot hold out {n_val} for validation; "
                               "give more images or lower val_fraction")
        chosen = range(len(shapes) - n_val) if split == "train" else range(len(shapes) - n_val, len(shapes))
        regions = [(i, 0, shapes[i][0], 0, shapes[i][1]) for i in chosen]
    else:
        h, w = shapes[0]
        cut, end = holdout_range(max(h, w), val_fraction, patch, patch + align - 1, f"{what} (one image)")
        cut -= cut % align
        lo, hi = (0, cut) if split == "train" else (cut, end)
        regions = [(0, lo, hi, 0, w)] if h >= w else [(0, 0, h, lo, hi)]
    if not regions:
        raise io.DataError(f"{what}: val_fraction is 0, there is no validation split")
    return regions


# ---------------------------------------------------------------------------------------------- augment

def augment(cond: np.ndarray, target: np.ndarray, rng: np.random.Generator, *, blur_channels: Sequence[int],
            p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Reference augmentations, each with probability p: Gaussian blur (sigma 3) of each input channel in
    `blur_channels` independently, vertical flip of everything, rot90 (counter-clockwise) of everything.

    A super-resolution input at half the target's size is blurred at that low resolution and then
    upsampled x2 (bilinear), as the reference blurs its 128 px input before resizing it to 256 px; blurring
    after upsampling would be half the reference's blur.
    """
    draws = rng.random(len(blur_channels) + 2)
    blurred = [c for c, d in zip(blur_channels, draws) if d < p]
    if blurred:
        cond = cond.copy()  # never modify the caller's array
        for c in blurred:
            cond[..., c] = ndimage.gaussian_filter(cond[..., c], BLUR_SIGMA, mode="reflect", truncate=3.0)
    if cond.shape[0] != target.shape[0]:
        cond = upsample2_bilinear(cond).astype(np.float32)
    if draws[-2] < p:
        cond, target = cond[::-1], target[::-1]
    if draws[-1] < p:
        cond, target = np.rot90(cond), np.rot90(target)
    return np.ascontiguousarray(cond), np.ascontiguousarray(target)
