"""Reads PyTorch `torch.save` state dicts into numpy arrays, without PyTorch.

A checkpoint written by torch >= 1.6 is a zip archive with one top-level folder holding
`data.pkl` (the pickled object tree), `data/<key>` (one raw byte blob per storage), `byteorder`
and `version`. Tensors are pickled as calls of `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)` whose storage is a persistent record ('storage', storage_type, key, location,
numel) pointing at `data/<key>`.

Safety: the pickle is read by an unpickler that resolves only the handful of globals a state
dict needs (the tensor/parameter rebuild functions, the typed storage classes and
`collections.OrderedDict`), each replaced by a local stand-in. Any other global (a pickled model
class, `os.system`, ...) is refused before anything runs, so no code from the file executes.

dtypes: every storage type maps to the numpy dtype of the same width, except bfloat16, which
numpy lacks: it is widened to float32 by shifting its 16 bits into the high half of a 32-bit
word (bfloat16 is exactly the top half of a float32, so this is lossless). Returned arrays are
C-contiguous copies in native byte order.
"""

import collections
import io
import os
import pickle
import zipfile
import zlib
from typing import Any

import numpy as np


class CheckpointFormatError(ValueError):
    """The file is not a PyTorch (>= 1.6, zip format) checkpoint that holds a state dict."""


_RESAVE_HINT = (
    "re-save it with torch>=1.6: torch.save(model.state_dict(), path, "
    "_use_new_zipfile_serialization=True)")

# Storage class name -> numpy dtype of one stored element (bfloat16 is read as its uint16 bits
# and widened on read, see above).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),  # raw bytes
}
# Modules under which torch has pickled storage classes (old CUDA tensors use torch.cuda).
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")

# A legacy file starts with a protocol-2 pickle of a 10-byte magic integer (opcode LONG1, 10).
_LEGACY_MAGIC_HEAD = b"\x80\x02\x8a\x0a"

# Wrapper keys tried, in order, when the top-level object is not itself a state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "network", "net", "module")


class _StorageType:
    """Stand-in for a torch storage class: only its element dtype matters."""

    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]
        self.is_bfloat16 = name == "BFloat16Storage"


class _StorageRef:
    """A storage record from the pickle; its bytes are read only when a tensor needs them."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel


class _TensorRecord:
    """The arguments of one pickled tensor, materialised later (so errors can name its key)."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor record without a storage record")
    return _TensorRecord(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    """A pickled nn.Parameter is its tensor (requires_grad and hooks do not matter here)."""
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles only tensors, storages, OrderedDicts and plain Python values."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module in _STORAGE_MODULES and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointFormatError(
            f"{self._path}: refusing to load the global '{module}.{name}' from the pickle (only "
            "tensors and plain containers are read, never pickled code). If this file holds a "
            "whole model or other objects, save just the weights instead: "
            "torch.save(model.state_dict(), path)")

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent record {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        return _StorageRef(storage_type, str(key), int(numel))


def _fail(path: str, what: str) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path}: {what}")


def _open_archive(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise _fail(path, "no such file; check the checkpoint path")
    if not os.path.isfile(path):
        raise _fail(path, "is not a file; pass the path of a <name>_Network.pth file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise _fail(path, "is empty; copy or download the checkpoint again")
    if head == _LEGACY_MAGIC_HEAD or _looks_like_tar(path):
        raise _fail(path, "is a legacy (pre-1.6) PyTorch checkpoint, which is not supported; "
                    + _RESAVE_HINT)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        if head[:2] == b"PK":
            raise _fail(path, f"is a truncated or damaged zip archive ({err}); copy or download "
                        "the checkpoint again") from err
        raise _fail(path, "is not a PyTorch checkpoint (no zip archive); expected a file "
                    "written by torch.save") from err


def _looks_like_tar(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(257)
        return f.read(5) == b"ustar"


def _find_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """The archive's folder that holds data.pkl, e.g. 'archive/' (torch uses one top folder)."""
    pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    pickles = [n for n in pickles if n.count("/") <= 1]
    if len(pickles) != 1:
        found = "no" if not pickles else f"{len(pickles)}"
        raise _fail(path, f"is a zip archive with {found} top-level data.pkl, so not a PyTorch "
                    "checkpoint; expected a file written by torch.save (torch>=1.6)")
    return pickles[0][: -len("data.pkl")]


def _read_member(archive: zipfile.ZipFile, name: str, path: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError as err:
        raise _fail(path, f"the archive lacks its entry '{name}'; the checkpoint is incomplete, "
                    "save or download it again") from err
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
        raise _fail(path, f"entry '{name}' is damaged ({err}); copy or download the checkpoint "
                    "again") from err


class _Materialiser:
    """Turns tensor records into numpy arrays, reading each storage blob once."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: str):
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._blobs: dict[str, bytes] = {}
        order_name = prefix + "byteorder"
        order = "little"
        if order_name in archive.namelist():
            order = _read_member(archive, order_name, path).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise _fail(path, f"unknown byte order '{order}' in {order_name}")
        self._order = "<" if order == "little" else ">"

    def array(self, record: _TensorRecord, key: str) -> np.ndarray:
        storage = record.storage
        dtype = storage.storage_type.dtype
        if dtype.itemsize > 1:
            dtype = dtype.newbyteorder(self._order)
        numel = int(np.prod(record.size, dtype=np.int64))
        if numel == 0:
            out = np.zeros(record.size, dtype=dtype.newbyteorder("="))
        else:
            blob = self._blob(storage.key)
            available = len(blob) // dtype.itemsize
            if available < storage.numel:
                raise _fail(self._path, f"storage data/{storage.key} of tensor '{key}' holds "
                            f"{available} elements but declares {storage.numel}; the checkpoint "
                            "is truncated or damaged, save or download it again")
            if any(s < 0 for s in record.stride) or record.offset < 0:
                raise _fail(self._path, f"tensor '{key}' has a negative stride or offset")
            last = sum((n - 1) * s for n, s in zip(record.size, record.stride))
            needed = record.offset + last + 1
            if needed > available:
                raise _fail(self._path, f"tensor '{key}' (shape {record.size}) needs {needed} "
                            f"elements of storage data/{storage.key}, which holds only "
                            f"{available}; the checkpoint is truncated or damaged, save or "
                            "download it again")
            flat = np.frombuffer(blob, dtype=dtype, count=available)
            view = np.lib.stride_tricks.as_strided(
                flat[record.offset:], shape=record.size,
                strides=tuple(s * dtype.itemsize for s in record.stride), writeable=False)
            out = np.array(view, dtype=dtype.newbyteorder("="), order="C")
        if storage.storage_type.is_bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def _blob(self, key: str) -> bytes:
        if key not in self._blobs:
            self._blobs[key] = _read_member(self._archive, f"{self._prefix}data/{key}", self._path)
        return self._blobs[key]


def _tensor_entries(mapping: dict) -> list:
    return [(k, v) for k, v in mapping.items() if isinstance(v, _TensorRecord)]


def _select_state_dict(obj: Any, path: str) -> dict:
    """The flat mapping of tensors: obj itself or the state dict it wraps."""
    if not isinstance(obj, dict):
        raise _fail(path, f"holds a {type(obj).__name__}, not a state dict; save "
                    "model.state_dict() instead")
    if _tensor_entries(obj):
        return obj
    for name in _WRAPPER_KEYS:
        inner = obj.get(name)
        if isinstance(inner, dict):
            return _select_state_dict(inner, path)
    candidates = [v for v in obj.values() if isinstance(v, dict) and _tensor_entries(v)]
    if len(candidates) == 1:
        return _select_state_dict(candidates[0], path)
    raise _fail(path, f"holds no tensors at the top level and no single wrapped state dict "
                f"(top-level keys: {sorted(map(str, obj))}); save model.state_dict() instead")


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict into an ordered {name: numpy array} dict.

    `path` is a zip-format (torch >= 1.6) checkpoint holding a state dict, or a dict that wraps
    one under a key such as 'state_dict' or 'model'. Non-tensor entries are left out. Raises
    CheckpointFormatError (naming the file and the fix) for anything else.
    """
    path = os.fspath(path)
    with _open_archive(path) as archive:
        prefix = _find_prefix(archive, path)
        pickled = _read_member(archive, prefix + "data.pkl", path)
        try:
            obj = _StateDictUnpickler(io.BytesIO(pickled), path).load()
        except CheckpointFormatError:
            raise
        except Exception as err:  # any malformed pickle: report it uniformly
            raise _fail(path, f"data.pkl cannot be read ({type(err).__name__}: {err}); the "
                        "checkpoint is damaged or was not written by torch.save") from err
        state = _select_state_dict(obj, path)
        materialiser = _Materialiser(archive, prefix, path)
        return {str(k): materialiser.array(v, str(k)) for k, v in _tensor_entries(state)}

