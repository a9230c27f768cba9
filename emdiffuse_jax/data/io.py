"""Reading and writing EM images and volumes: TIFF, slice folders, PNG, Zarr / OME-Zarr and N5.

Everything keeps the file's dtype (16-bit stays 16-bit); intensity mapping is `normalize.py`'s job.
Volumes are (Z, Y, X). `read_volume(..., lazy=True)` returns an array-like that reads only the slices
indexed, for volumes larger than memory. Every failure raises `DataError` naming the file and the fix.
Readers never modify their input; writers refuse to overwrite unless asked.
"""

from __future__ import annotations

import collections
import errno
import json
import os
import pathlib
import re
import threading
from typing import Any, Callable, Sequence

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
SUPPORTED_DTYPES = tuple(
    np.dtype(d) for d in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64")
)


class DataError(ValueError):
    """Bad or unreadable input; the message names the file, the problem and the fix."""


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # platforms without sysconf
        return 16 << 30


# A file whose pixels would take more than this to decode is refused before decoding (half the memory).
MAX_DECODED_BYTES = _memory_bytes() // 2
# ... and so is one that would decode to more than this many times its size on disk, once above 1 GiB:
# no lossless codec reaches that on real EM data; only crafted "decompression bombs" do.
MAX_EXPANSION = 1000


def check_decoded_size(path: pathlib.Path, nbytes: int, what: str = "its pixels") -> None:
    """Refuses to decode `nbytes` from `path` when it would not fit in memory or is a decompression bomb."""
    size = max(path.stat().st_size, 1) if path.is_file() else None
    if nbytes > MAX_DECODED_BYTES:
        raise DataError(f"{path}: decoding {what} needs {nbytes / 2**30:.1f} GiB, more than half of this "
                        f"machine's memory; crop or tile it, or convert it to Zarr (read slice by slice)")
    if size is not None and nbytes > (1 << 30) and nbytes > MAX_EXPANSION * size:
        raise DataError(f"{path}: {size} bytes on disk would decode to {nbytes / 2**30:.1f} GiB (over "
                        f"{MAX_EXPANSION}x); this looks like a decompression bomb, not an image - re-export it")


def read_failure(path: Any, exc: BaseException, kind: str) -> DataError:
    """A DataError for a file that could not be read: permissions and empty files said as such."""
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return DataError(f"{path}: permission denied; make it readable (chmod u+r) or copy it somewhere readable")
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return DataError(f"{path}: cannot read ({exc.strerror}); check the file and the disk")
    p = pathlib.Path(path)
    if p.is_file() and p.stat().st_size == 0:
        return DataError(f"{path}: empty file (0 bytes); the copy or export failed - redo it")
    return DataError(f"{path}: cannot read {kind} ({type(exc).__name__}: {exc}); the file is truncated, "
                     f"corrupt or not a {kind} - re-export it")


def natural_key(name: str) -> list:
    """Sort key so that '2.tif' < '10.tif' (numbers compared as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(name))]


def check_array(array: np.ndarray, source: Any, *, finite: bool = True) -> np.ndarray:
    """Rejects dtypes we cannot map to intensities and (for floats) NaN/inf values, naming `source`."""
    dtype = np.dtype(array.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise DataError(
            f"{source}: unsupported dtype {dtype}; convert it to uint8, uint16 or float32 "
            f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)})"
        )
    if finite and dtype.kind == "f" and array.size and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{source}: {bad} NaN or infinite values; fill or mask them before use")
    return array


def _to_gray(array: np.ndarray, source: Any) -> np.ndarray:
    """(H, W, 3|4) colour images: identical channels -> one channel, else ITU-R 601 luma in the same dtype."""
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if array.dtype.kind in "ui":
            info = np.iinfo(array.dtype)
            luma = np.clip(np.rint(luma), info.min, info.max)
        return luma.astype(array.dtype)
    if array.ndim != 2:
        raise DataError(f"{source}: expected a 2D grey image, got shape {array.shape}")
    return array


def _check_tiff_complete(tif, path: pathlib.Path) -> None:
    """Raises if pages point past the end of the file or fewer pages exist than the metadata announces."""
    size = path.stat().st_size
    pages = 0
    for page in tif.pages:
        pages += 1
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
        if ends and max(ends) > size:
            raise DataError(f"{path}: page {pages - 1} ends at byte {max(ends)} but the file has {size} bytes; "
                            "the file is truncated - copy or export it again")
    announced = None
    if tif.shaped_metadata and "shape" in tif.shaped_metadata[0]:
        shape = tif.shaped_metadata[0]["shape"]
        announced = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    elif tif.imagej_metadata and "images" in tif.imagej_metadata:
        announced = int(tif.imagej_metadata["images"])
    if announced is not None and pages < announced and tif.pages[0].is_contiguous is None:
        raise DataError(f"{path}: metadata announces {announced} images but only {pages} pages are readable; "
                        "the file is truncated - copy or export it again")


def _check_single_channel(series, path: pathlib.Path) -> None:
    """Refuses multi-channel TIFFs (channels or samples per pixel other than grey/RGB/RGBA), which would
    otherwise be read as a stack of thin images."""
    for axis, allowed in (("S", (1, 3, 4)), ("C", (1,))):
        if axis in series.axes:
            n = series.shape[series.axes.index(axis)]
            if n not in allowed:
                raise DataError(f"{path}: holds {n} channels per pixel (shape {tuple(series.shape)}, axes "
                                f"{series.axes}); EM images must be single-channel grey - save one channel "
                                "(Fiji: Image > Color > Split Channels) and pass that")


def tiff_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a TIFF's first series without length-1 axes (checked: complete, one channel)."""
    import tifffile

    path = _existing(path)
    try:
        with tifffile.TiffFile(path) as tif:
            _check_tiff_complete(tif, path)
            _check_single_channel(tif.series[0], path)
            return tuple(s for s in tif.series[0].shape if s != 1)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise read_failure(path, exc, "TIFF") from exc


def _read_tiff(path: pathlib.Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            _check_tiff_complete(tif, path)
            series = tif.series[0]
            _check_single_channel(series, path)
            check_decoded_size(path, int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize)
            return tif.asarray()
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise read_failure(path, exc, "TIFF") from exc


def _read_png(path: pathlib.Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            check_decoded_size(path, im.width * im.height * len(im.getbands()) * (2 if "16" in im.mode else 1))
            im.load()
            if im.mode in ("P", "LA", "PA", "1"):
                im = im.convert("L")
            return np.asarray(im)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: {exc}; a PNG this large is refused as a possible decompression bomb - "
                        "convert it to TIFF") from exc
    except Exception as exc:
        raise read_failure(path, exc, "PNG") from exc


def _existing(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return path


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One 2D grey image (TIFF or PNG) in its own dtype; a one-page-per-slice TIFF must hold one page."""
    path = _existing(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        array = np.squeeze(_read_tiff(path))
    elif suffix == ".png":
        array = _read_png(path)
    else:
        raise DataError(f"{path}: unsupported image type '{suffix}'; use TIFF or PNG")
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        raise DataError(f"{path}: holds a stack of {array.shape[0]} images; read it with read_volume")
    return check_array(_to_gray(array, path), path)


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Image files of a folder in natural order ('2.tif' before '10.tif'); hidden files skipped."""
    folder = _existing(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    try:
        files = [p for p in folder.iterdir()
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    except OSError as exc:
        raise read_failure(folder, exc, "folder") from exc
    if not files:
        raise DataError(f"{folder}: no images found (expected .tif, .tiff or .png files)")
    return sorted(files, key=lambda p: natural_key(p.name))


class LazyVolume:
    """Array-like (Z, Y, X) volume that loads only the z-slices an index touches.

    Supports `shape`, `dtype`, `ndim`, `len`, numpy-style `[...]` indexing and `np.asarray`.
    """

    def __init__(self, shape: Sequence[int], dtype: Any, load_slice: Callable[[int], np.ndarray], name: str,
                 cache_bytes: int = 256 << 20):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.name = name
        self._load_slice = load_slice
        plane = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()  # prefetching threads share the cache
        self._cache_slices = max(1, cache_bytes // max(plane, 1))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyVolume({self.name}, shape={self.shape}, dtype={self.dtype})"

    def _slice(self, z: int) -> np.ndarray:
        """Slice z, from a small LRU cache (neighbouring samples share slices)."""
        with self._lock:
            if z in self._cache:
                self._cache.move_to_end(z)
                return self._cache[z]
        plane = self._load_slice(z)
        if plane.shape != self.shape[1:] or plane.dtype != self.dtype:
            raise DataError(f"{self.name}: slice {z} has shape {plane.shape} {plane.dtype}, expected "
                            f"{self.shape[1:]} {self.dtype}; all slices must match")
        plane = check_array(plane, f"{self.name} (slice {z})")
        plane.setflags(write=False)
        with self._lock:
            self._cache[z] = plane
            if len(self._cache) > self._cache_slices:
                self._cache.popitem(last=False)
        return plane

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            at = next(k for k, i in enumerate(index) if i is Ellipsis)
            fill = (slice(None),) * (3 - (len(index) - 1))
            index = index[:at] + fill + index[at + 1:]
        zi, rest = index[0], index[1:]
        if isinstance(zi, (int, np.integer)):
            return np.array(self._slice(range(self.shape[0])[zi])[rest])
        zs = np.arange(self.shape[0])[zi]
        if not len(zs):
            return np.zeros((0,) + np.zeros(self.shape[1:], np.uint8)[rest].shape, self.dtype)
        return np.stack([self._slice(int(z))[rest] for z in zs])

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class _CheckedArray:
    """Numpy-style read access to a chunked array (Zarr, or N5 via tensorstore) whose read failures
    (a corrupt or missing chunk, a codec error) become a DataError naming the container and the index."""

    def __init__(self, read: Callable[[Any], np.ndarray], shape: Sequence[int], dtype: Any, name: str):
        self._read = read
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.name = name

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        try:
            return np.asarray(self._read(index))
        except Exception as exc:  # codecs and stores raise many types
            raise DataError(f"{self.name}: cannot read [{_index_text(index)}] ({type(exc).__name__}: {exc}); "
                            "a chunk is corrupt or missing - copy or export the volume again") from exc

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)


def _index_text(index) -> str:
    parts = index if isinstance(index, tuple) else (index,)
    text = lambda i: f"{i.start or ''}:{'' if i.stop is None else i.stop}" if isinstance(i, slice) else str(i)  # noqa: E731
    return ", ".join("..." if i is Ellipsis else text(i) for i in parts)


def _open_zarr(path: pathlib.Path, dataset: str | None):
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:
        raise DataError(f"{path}: cannot open as Zarr ({type(exc).__name__}: {exc})") from exc
    if isinstance(node, zarr.Array):
        return _CheckedArray(node.__getitem__, node.shape, node.dtype, str(path))
    if dataset is None:
        multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        if multiscales:  # OME-Zarr: level 0 is full resolution
            dataset = multiscales[0]["datasets"][0]["path"]
        else:
            names = [name for name, _ in node.arrays()]
            if len(names) != 1:
                raise DataError(f"{path}: Zarr group holds arrays {sorted(names)}; name one with dataset=")
            dataset = names[0]
    try:
        array = node[dataset]
    except KeyError as exc:
        raise DataError(f"{path}: Zarr group has no array '{dataset}'") from exc
    return _CheckedArray(array.__getitem__, array.shape, array.dtype, f"{path}/{dataset}")


def _open_n5(path: pathlib.Path, dataset: str | None):
    import tensorstore as ts

    target = path / dataset if dataset else path
    try:
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(target)}}, read=True).result()
    except Exception as exc:
        raise DataError(f"{target}: cannot open as N5 ({exc}); pass the dataset inside the container "
                        "with dataset=") from exc
    return _CheckedArray(lambda index: store[index].read().result(), store.shape, store.dtype.numpy_dtype,
                         str(target))


def _is_zarr(path: pathlib.Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


def _is_n5(path: pathlib.Path) -> bool:
    return path.suffix.lower() == ".n5" or (path / "attributes.json").exists()


def _check_volume_shape(shape: Sequence[int], name: Any) -> None:
    if len(shape) != 3:
        raise DataError(f"{name}: expected a (Z, Y, X) volume, got shape {tuple(shape)}")
    if shape[0] < 2:
        raise DataError(f"{name}: volume has {shape[0]} slice(s); volume tasks need at least 2 "
                        "(pass a stack or a folder of slices)")


AUTO_LAZY_BYTES = 1 << 30


def read_volume(path: str | os.PathLike, *, lazy: bool | None = False, dataset: str | None = None):
    """A (Z, Y, X) volume from a multi-page TIFF, a folder of slices (natural order), Zarr/OME-Zarr or N5.

    lazy=True returns an array-like that reads slices (or chunks) on demand; False a numpy array; None
    decides by size (lazy above 1 GiB). `dataset` picks the array inside a Zarr group or N5 container.
    Needs at least 2 slices.
    """
    path = _existing(path)
    if lazy is None:
        probe = read_volume(path, lazy=True, dataset=dataset)
        if int(np.prod(probe.shape)) * np.dtype(probe.dtype).itemsize > AUTO_LAZY_BYTES:
            return probe
        lazy = False
    if path.is_dir() and _is_zarr(path):
        array = _open_zarr(path, dataset)
    elif path.is_dir() and _is_n5(path):
        array = _open_n5(path, dataset)
    elif path.is_dir():
        files = list_images(path)
        first = read_image(files[0])
        array = LazyVolume((len(files),) + first.shape, first.dtype, lambda z: read_image(files[z]), str(path))
    elif path.suffix.lower() in (".tif", ".tiff"):
        array = _tiff_volume(path)
        if not lazy:
            _check_volume_shape(array.shape, path)
            return check_array(np.asarray(_read_tiff(path)).reshape(array.shape), path)
    else:
        raise DataError(f"{path}: unsupported volume type; use a TIFF stack, a folder of slices, Zarr or N5")
    _check_volume_shape(array.shape, path)
    check_array(np.empty(0, array.dtype), path)
    if lazy:
        return array
    return check_array(np.asarray(array[:]), path)


def _tiff_volume(path: pathlib.Path) -> LazyVolume:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            _check_tiff_complete(tif, path)
            series = tif.series[0]
            _check_single_channel(series, path)
            shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
            pages = len(tif.pages)
    except DataError:
        raise
    except Exception as exc:
        raise read_failure(path, exc, "TIFF") from exc
    squeezed = tuple(s for s in shape if s != 1) or (1,)
    if len(squeezed) == 2:
        squeezed = (1,) + squeezed
    if len(squeezed) != 3:
        raise DataError(f"{path}: expected a (Z, Y, X) stack, got shape {shape} (axes {axes})")

    check_decoded_size(path, int(np.prod(squeezed[1:])) * np.dtype(dtype).itemsize, "one slice")

    def load(z: int) -> np.ndarray:
        try:
            return np.asarray(tifffile.imread(path, key=z)).reshape(squeezed[1:])
        except Exception as exc:
            raise DataError(f"{path}: cannot read slice {z} ({type(exc).__name__}: {exc}); the file is "
                            "truncated or corrupt - re-export it") from exc

    if pages != squeezed[0]:  # one page holds several slices: read once
        whole = np.asarray(_read_tiff(path)).reshape(squeezed)
        return LazyVolume(squeezed, dtype, lambda z: whole[z], str(path))
    return LazyVolume(squeezed, dtype, load, str(path))


# Length units -> nanometres (TIFF ResolutionUnit codes: 2 inch, 3 cm; tifffile adds 4 mm, 5 micrometre).
_NM_PER_UNIT = {"nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "um": 1e3, "\u00b5m": 1e3, "\u03bcm": 1e3,
                "micron": 1e3, "micrometer": 1e3, "micrometre": 1e3, "mm": 1e6, "millimeter": 1e6,
                "cm": 1e7, "centimeter": 1e7, "m": 1e9, "meter": 1e9, "inch": 2.54e7, "angstrom": 0.1,
                "\u00e5": 0.1, "a": 0.1, "pm": 1e-3, "picometer": 1e-3}
_NM_PER_RESOLUTION_UNIT = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}

VoxelSize = tuple  # (z, y, x) or (y, x) in nanometres; an axis the file does not describe is None


def nm_per_unit(unit: str | None) -> float | None:
    """Nanometres per `unit` ('nm', 'micron', '\u00b5m', 'nanometer', ...); None for unknown units."""
    if unit is None:
        return None
    return _NM_PER_UNIT.get(str(unit).strip().lower().replace("\\u00b5", "\u00b5"))


def _tiff_voxel_size(tif, ndim: int) -> VoxelSize | None:
    """Voxel size in nm from tifffile's shaped metadata, ImageJ metadata or the resolution tags."""
    shaped = tif.shaped_metadata
    if shaped and "voxel_size" in shaped[0]:
        scale = nm_per_unit(shaped[0].get("unit", "nm")) or 1.0
        return tuple(float(v) * scale for v in shaped[0]["voxel_size"])[-ndim:]
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    xy = None
    if "XResolution" in page.tags and "YResolution" in page.tags:
        (xn, xd), (yn, yd) = page.tags["XResolution"].value, page.tags["YResolution"].value
        unit_code = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
        scale = nm_per_unit(ij.get("unit")) if ij.get("unit") else _NM_PER_RESOLUTION_UNIT.get(unit_code)
        if scale and xn and yn and not (unit_code == 1 and not ij.get("unit")):
            xy = (yd / yn * scale, xd / xn * scale)
    if xy is None and "spacing" not in ij:
        return None
    if ndim == 2:
        return xy
    z = None
    if "spacing" in ij and ij.get("unit") and nm_per_unit(ij["unit"]):
        z = float(ij["spacing"]) * nm_per_unit(ij["unit"])
    return (z,) + (xy or (None, None))


def _zarr_voxel_size(node) -> VoxelSize | None:
    """Voxel size in nm from OME-Zarr multiscales (NGFF 0.4 / 0.5) or our plain voxel_size/unit attrs."""
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        ms = multiscales[0]
        scale = next((t["scale"] for t in ms["datasets"][0].get("coordinateTransformations", [])
                      if t.get("type") == "scale"), None)
        if scale is None:
            return None
        sizes = []
        for axis, value in zip(ms.get("axes", []), scale):
            axis = axis if isinstance(axis, dict) else {"name": axis, "type": "space"}
            if axis.get("type", "space") == "space":
                factor = nm_per_unit(axis.get("unit"))
                sizes.append(float(value) * factor if factor else None)
        return tuple(sizes) or None
    if "voxel_size" in attrs:
        factor = nm_per_unit(attrs.get("unit", "nm")) or 1.0
        return tuple(float(v) * factor for v in attrs["voxel_size"])
    return None


def _n5_voxel_size(path: pathlib.Path, dataset: str | None) -> VoxelSize | None:
    """N5 'resolution' (+ 'units') or 'pixelResolution' attributes; N5 lists axes as X, Y, Z."""
    for folder in ([path / dataset] if dataset else []) + [path]:
        attrs_path = folder / "attributes.json"
        if not attrs_path.is_file():
            continue
        attrs = json.loads(attrs_path.read_text())
        if isinstance(attrs.get("pixelResolution"), dict):
            values, units = attrs["pixelResolution"].get("dimensions"), [attrs["pixelResolution"].get("unit")] * 3
        else:
            values, units = attrs.get("resolution"), attrs.get("units") or ["nm"] * 3
        if values:
            return tuple(float(v) * (nm_per_unit(u) or 1.0) for v, u in zip(values, units))[::-1]
    return None


def read_voxel_size(path: str | os.PathLike, dataset: str | None = None) -> VoxelSize | None:
    """The voxel size (z, y, x) or pixel size (y, x) in nm that a file records, or None if it records none.

    Reads ImageJ metadata (spacing, unit) and the TIFF resolution tags, tifffile's shaped metadata (what
    `write_tiff` writes for other dtypes), OME-Zarr multiscales and N5 resolution attributes. For a folder
    of slices the first slice gives (y, x) and z is unknown. Axes a file does not describe are None.
    """
    import tifffile

    path = _existing(path)
    try:
        if path.is_dir() and _is_zarr(path):
            import zarr
            node = zarr.open(store=str(path), mode="r")
            return _zarr_voxel_size(node)
        if path.is_dir() and _is_n5(path):
            return _n5_voxel_size(path, dataset)
        if path.is_dir():
            first = list_images(path)[0]
            if first.suffix.lower() == ".png":
                return None
            xy = read_voxel_size(first)
            return None if xy is None else (None,) + tuple(xy[-2:])
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                squeezed = [s for s in tif.series[0].shape if s != 1]
                return _tiff_voxel_size(tif, 3 if len(squeezed) >= 3 else 2)
    except DataError:
        raise
    except Exception as exc:  # corrupt metadata: the reader names the file
        raise DataError(f"{path}: cannot read the voxel size ({type(exc).__name__}: {exc}); pass it with "
                        "--voxel_size") from exc
    return None


def read_tiff_metadata(path: str | os.PathLike) -> dict:
    """Axes, voxel size (per axis, in nm; None if the file records none) and unit of a TIFF."""
    import tifffile

    path = _existing(path)
    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes
    except Exception as exc:
        raise DataError(f"{path}: cannot read TIFF metadata ({exc})") from exc
    voxel = read_voxel_size(path)
    return {"axes": axes, "voxel_size": voxel, "unit": "nm" if voxel is not None else None}


def file_identity(path: str | os.PathLike) -> dict:
    """What identifies an input for resuming: the number, total size and a digest of the (relative name,
    size, modification time) of every file it consists of (a file, or every non-hidden file under a
    folder, Zarr and N5 included). Editing, replacing, adding or removing a file changes it."""
    import hashlib

    path = pathlib.Path(path)
    if path.is_file():
        entries = [("", path.stat())]
    else:
        entries = []
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            entries += [(str((pathlib.Path(root) / f).relative_to(path)), (pathlib.Path(root) / f).stat())
                        for f in sorted(files) if not f.startswith(".")]
    digest = hashlib.sha256("".join(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n" for name, st in entries).encode())
    return {"files": len(entries), "bytes": sum(st.st_size for _, st in entries), "digest": digest.hexdigest()[:16]}


def check_output_folder(output: str | os.PathLike, inputs: Sequence[Any] = ()) -> pathlib.Path:
    """Checks, before anything is read or written, that `output` can be a fresh or resumable output folder:
    not one of the inputs, not inside an input folder, not holding an input, not an existing file or under
    one, and writable. Returns it as a Path; what may already be inside it is the caller's contract."""
    output = pathlib.Path(output)
    out = output.resolve()
    for given in inputs:
        if given is None:
            continue
        inp = pathlib.Path(given).resolve()
        if inp == out or out in inp.parents or (inp.is_dir() and inp in out.parents):
            raise DataError(f"output folder {output} overlaps the input {given}; choose a separate folder so "
                            "the input can never be overwritten")
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: is an existing file, not a folder; choose a new folder for the output")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise DataError(f"{output}: lies under {existing}, which is a file; choose a folder path for the output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{output}: cannot write in {existing} (permission denied or read-only file system); "
                        "choose a writable location for the output")
    return output


def _refuse_overwrite(path: pathlib.Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise DataError(f"{path}: already exists; choose another output path or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_tiff(path: str | os.PathLike, array: np.ndarray, *, axes: str | None = None,
               voxel_size: Sequence[float] | None = None, unit: str = "nm", overwrite: bool = False,
               compression: str | None = "zlib") -> pathlib.Path:
    """Writes an image (YX) or volume (ZYX) in its own dtype, with axes and voxel size readable by Fiji.

    uint8/uint16/float32 go out as ImageJ hyperstacks (Fiji shows the voxel size); other supported dtypes
    as tifffile 'shaped' TIFFs with the same metadata in JSON. `voxel_size` is one value per axis.
    """
    path = pathlib.Path(path)
    array = check_array(np.asarray(array), path, finite=False)
    axes = axes or "ZYX"[-array.ndim:]
    if len(axes) != array.ndim or array.ndim not in (2, 3):
        raise DataError(f"{path}: axes '{axes}' do not match array shape {array.shape} (2D or 3D only)")
    _refuse_overwrite(path, overwrite)
    _imwrite(path, array, array.shape, array.dtype, axes, voxel_size, unit, compression)
    return path


def write_tiff_stack(path: str | os.PathLike, slices, shape: Sequence[int], dtype, *,
                     voxel_size: Sequence[float | None] | None = None, unit: str = "nm", overwrite: bool = False,
                     compression: str | None = "zlib") -> pathlib.Path:
    """Writes a (Z, Y, X) stack from an iterable of Y x X slices, one page at a time (a volume larger than
    memory), as one multi-page TIFF with the same metadata as `write_tiff` (Fiji opens it as a stack
    with its voxel size)."""
    path = pathlib.Path(path)
    dtype = np.dtype(dtype)
    check_array(np.empty(0, dtype), path)
    if len(shape) != 3:
        raise DataError(f"{path}: a stack needs a (Z, Y, X) shape, got {tuple(shape)}")
    _refuse_overwrite(path, overwrite)
    pages = (np.asarray(plane, dtype=dtype).reshape(shape[1:]) for plane in slices)
    _imwrite(path, pages, tuple(shape), dtype, "ZYX", voxel_size, unit, compression)
    return path


def _imwrite(path, data, shape, dtype, axes, voxel_size, unit, compression) -> None:
    """ImageJ hyperstack for uint8/uint16/float32 (Fiji reads spacing and unit), else a shaped TIFF with the
    voxel size in its JSON; X/Y resolution in pixels per `unit` either way. None sizes are left out."""
    import tifffile

    if voxel_size is not None and len(voxel_size) != len(shape):
        raise DataError(f"{path}: voxel_size {tuple(voxel_size)} needs one value per axis '{axes}'")
    sizes = {a: float(v) for a, v in zip(axes, voxel_size or ()) if v is not None}
    kwargs: dict = {"compression": compression, "photometric": "minisblack", "shape": shape, "dtype": dtype}
    if "X" in sizes and "Y" in sizes:
        kwargs["resolution"] = (1.0 / sizes["X"], 1.0 / sizes["Y"])
    metadata: dict = {"axes": axes, "unit": unit}
    if np.dtype(dtype) in (np.uint8, np.uint16, np.float32):
        if "Z" in sizes:
            metadata["spacing"] = sizes["Z"]
        tifffile.imwrite(path, data, imagej=True, metadata=metadata, **kwargs)
    else:
        if voxel_size is not None and len(sizes) == len(shape):
            metadata["voxel_size"] = [sizes[a] for a in axes]
        tifffile.imwrite(path, data, metadata=metadata, **kwargs)


def write_zarr(path: str | os.PathLike, array, *, chunks: Sequence[int] | None = None,
               axes: str | None = None, voxel_size: Sequence[float] | None = None, unit: str = "nm",
               overwrite: bool = False) -> pathlib.Path:
    """Writes an array (numpy or array-like, slice by slice) as a Zarr array with axes/voxel-size attributes."""
    import zarr

    path = pathlib.Path(path)
    check_array(np.empty(0, array.dtype), path)
    axes = axes or "ZYX"[-len(array.shape):]
    _refuse_overwrite(path, overwrite)
    if chunks is None:
        chunks = tuple([1] * (len(array.shape) - 2) + [min(s, 512) for s in array.shape[-2:]])
    out = zarr.create_array(store=str(path), shape=array.shape, dtype=array.dtype, chunks=tuple(chunks),
                            overwrite=overwrite)
    if len(array.shape) == 3:
        for z in range(array.shape[0]):
            out[z] = np.asarray(array[z])
    else:
        out[...] = np.asarray(array)
    attrs: dict = {"axes": axes, "unit": unit}
    if voxel_size is not None:
        attrs["voxel_size"] = [float(v) for v in voxel_size]
    out.attrs.update(json.loads(json.dumps(attrs)))
    return path
