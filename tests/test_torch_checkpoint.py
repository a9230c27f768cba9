"""Tests of the PyTorch-free reader of `torch.save` state dicts (emdiffuse_jax.torch_checkpoint).

Hand-built checkpoints are written by `_write_checkpoint` below with the standard library only: a
zip laid out as torch >= 1.6 writes it, whose data.pkl is emitted opcode by opcode (protocol 2),
so the tests need neither torch nor the reader's own code to produce their inputs.
"""

import json
import pickle
import shutil
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest
from conftest import shared_path

from emdiffuse_jax.torch_checkpoint import CheckpointFormatError, read_torch_state_dict

SCHEDULE_BUFFERS = ("gammas", "sqrt_recip_gammas", "sqrt_recipm1_gammas",
                    "posterior_log_variance_clipped", "posterior_mean_coef1",
                    "posterior_mean_coef2")


# ----------------------------------------------------------------------------- pickle emitter
def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)  # BININT


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


class Tensor:
    """A tensor record to pickle: storage key/type/numel plus offset, size and stride."""

    def __init__(self, key, storage_type, numel, offset, size, stride, parameter=False):
        self.key, self.storage_type, self.numel = key, storage_type, numel
        self.offset, self.size, self.stride, self.parameter = offset, size, stride, parameter

    def pickled(self) -> bytes:
        storage = (b"(" + _str("storage") + _global("torch", self.storage_type) + _str(self.key)
                   + _str("cpu") + _int(self.numel) + b"t" + b"Q")  # TUPLE, BINPERSID
        hooks = _global("collections", "OrderedDict") + b")R"  # OrderedDict()
        tensor = (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage
                  + _int(self.offset) + _ints(self.size) + _ints(self.stride) + b"\x89" + hooks
                  + b"tR")  # NEWFALSE (requires_grad), TUPLE, REDUCE
        if self.parameter:
            tensor = (_global("torch._utils", "_rebuild_parameter") + b"(" + tensor + b"\x89"
                      + hooks + b"tR")
        return tensor


def _value(v) -> bytes:
    if isinstance(v, Tensor):
        return v.pickled()
    if isinstance(v, dict):
        items = b"".join(_str(k) + _value(w) for k, w in v.items())
        return _global("collections", "OrderedDict") + b")R(" + items + b"u"  # SETITEMS
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, str):
        return _str(v)
    raise TypeError(v)


def _write_checkpoint(path, obj, blobs, byteorder="little", pickled=None):
    """Writes `obj` (dicts of Tensor/int/str) and raw storage `blobs` in torch's zip layout."""
    data = pickled if pickled is not None else b"\x80\x02" + _value(obj) + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", byteorder)
        for key, blob in blobs.items():
            archive.writestr(f"archive/data/{key}", blob)
        archive.writestr("archive/version", "3\n")
    return path


# ----------------------------------------------------------------------------- golden files
@pytest.mark.parametrize("name", ["unet2d_tiny", "unet3d_tiny"])
def test_golden_checkpoint_keys_shapes_dtypes_match_manifest(name):
    path = shared_path("golden", f"{name}_Network.pth")
    manifest = json.loads(shared_path("golden", "manifest.json").read_text())[name]
    state = read_torch_state_dict(path)
    assert list(state) == [key for key, _, _ in manifest["state_dict"]]
    for key, shape, dtype in manifest["state_dict"]:
        assert str(state[key].dtype) == dtype, key
        assert state[key].flags.c_contiguous, key
        # The schedule buffers are checked against schedule_train.npz below: the manifest lists
        # them as length 1000 for unet2d_tiny, while that .pth (pickle header and 8000-byte
        # blobs), README and reference section 2.7 all say 2000 (the train schedule).
        if key not in SCHEDULE_BUFFERS:
            assert list(state[key].shape) == shape, key
    n_params = sum(v.size for k, v in state.items() if k.startswith("denoise_fn."))
    assert n_params == manifest["n_params"]


@pytest.mark.parametrize("name", ["unet2d_tiny", "unet3d_tiny"])
def test_golden_schedule_buffers_equal_train_schedule(name):
    state = read_torch_state_dict(shared_path("golden", f"{name}_Network.pth"))
    schedule = np.load(shared_path("golden", "schedule_train.npz"))
    assert set(schedule.files) == set(SCHEDULE_BUFFERS)
    for key in SCHEDULE_BUFFERS:
        assert state[key].dtype == schedule[key].dtype
        np.testing.assert_array_equal(state[key], schedule[key], err_msg=key)


def test_golden_weights_are_distinct_nonzero_tensors():
    state = read_torch_state_dict(shared_path("golden", "unet2d_tiny_Network.pth"))
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.ndim > 1]
    assert all(np.isfinite(v).all() and np.abs(v).max() > 0 for v in weights)
    # Each tensor comes from its own storage: no two weights of equal shape may be identical.
    by_shape = {}
    for w in weights:
        for other in by_shape.setdefault(w.shape, []):
            assert not np.array_equal(w, other)
        by_shape[w.shape].append(w)


# ----------------------------------------------------------------------------- hand-built files
def test_transposed_tensor_with_storage_offset_is_rebuilt(tmp_path):
    storage = np.arange(20, dtype=np.float32) * 1.5
    # A (3, 4) view starting at element 2 with column-major strides: storage[2 + i + 5 * j]
    # (the transpose of a (4, 5)-strided matrix), plus a 0-d tensor and an empty one.
    obj = {"t": Tensor("0", "FloatStorage", 20, 2, (3, 4), (1, 5)),
           "scalar": Tensor("0", "FloatStorage", 20, 7, (), ()),
           "empty": Tensor("0", "FloatStorage", 20, 0, (0, 3), (3, 1)),
           "step": 12}
    state = read_torch_state_dict(_write_checkpoint(tmp_path / "a.pth", obj,
                                                    {"0": storage.tobytes()}))
    expected = np.array([[storage[2 + i + 5 * j] for j in range(4)] for i in range(3)])
    assert list(state) == ["t", "scalar", "empty"]  # the int entry is left out
    np.testing.assert_array_equal(state["t"], expected)
    assert state["t"].flags.c_contiguous and state["t"].flags.writeable
    assert state["scalar"].shape == () and state["scalar"] == storage[7]
    assert state["empty"].shape == (0, 3) and state["empty"].dtype == np.float32


def test_tensors_sharing_a_storage_are_independent_copies(tmp_path):
    storage = np.arange(6, dtype=np.float64)
    obj = {"a": Tensor("0", "DoubleStorage", 6, 0, (2, 3), (3, 1)),
           "b": Tensor("0", "DoubleStorage", 6, 3, (3,), (1,), parameter=True)}
    state = read_torch_state_dict(_write_checkpoint(tmp_path / "s.pth", obj,
                                                    {"0": storage.tobytes()}))
    state["a"][1, 0] = -1.0
    np.testing.assert_array_equal(state["b"], [3.0, 4.0, 5.0])


@pytest.mark.parametrize("storage_type,dtype", [
    ("HalfStorage", np.float16), ("LongStorage", np.int64), ("IntStorage", np.int32),
    ("ByteStorage", np.uint8), ("BoolStorage", np.bool_), ("DoubleStorage", np.float64)])
def test_storage_types_map_to_numpy_dtypes(tmp_path, storage_type, dtype):
    values = (np.arange(6) % 3 - 1 if dtype != np.uint8 else np.arange(6)).astype(dtype)
    obj = {"x": Tensor("0", storage_type, 6, 0, (2, 3), (3, 1))}
    state = read_torch_state_dict(_write_checkpoint(tmp_path / "d.pth", obj,
                                                    {"0": values.tobytes()}))
    assert state["x"].dtype == dtype
    np.testing.assert_array_equal(state["x"], values.reshape(2, 3))


def test_bfloat16_is_widened_exactly_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3, -65280.0, 0.0], dtype=ml_dtypes.bfloat16)
    obj = {"w": Tensor("0", "BFloat16Storage", 6, 0, (3, 2), (1, 3))}
    state = read_torch_state_dict(_write_checkpoint(tmp_path / "b.pth", obj,
                                                    {"0": values.view(np.uint16).tobytes()}))
    assert state["w"].dtype == np.float32
    np.testing.assert_array_equal(state["w"], values.astype(np.float32).reshape(2, 3).T)


def test_big_endian_storage_is_returned_in_native_order(tmp_path):
    values = np.linspace(-1, 1, 4, dtype=">f4")
    obj = {"x": Tensor("0", "FloatStorage", 4, 0, (4,), (1,))}
    state = read_torch_state_dict(_write_checkpoint(tmp_path / "be.pth", obj,
                                                    {"0": values.tobytes()}, byteorder="big"))
    assert state["x"].dtype == np.dtype("=f4")
    np.testing.assert_array_equal(state["x"], values.astype(np.float32))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict_returns_inner_tensors(tmp_path, wrapper):
    storage = np.arange(4, dtype=np.float32)
    inner = {"layer.weight": Tensor("0", "FloatStorage", 4, 0, (2, 2), (2, 1)),
             "layer.note": "not a tensor"}
    optimizer = {"state": {"exp_avg": Tensor("1", "FloatStorage", 4, 0, (4,), (1,))}}
    obj = {"epoch": 3, wrapper: inner, "optimizer": optimizer}
    # Blob 1 is missing: the optimizer tensors must not be read at all.
    state = read_torch_state_dict(_write_checkpoint(tmp_path / "w.pth", obj,
                                                    {"0": storage.tobytes()}))
    assert list(state) == ["layer.weight"]
    np.testing.assert_array_equal(state["layer.weight"], storage.reshape(2, 2))


# ----------------------------------------------------------------------------- bad input
def _error(path) -> str:
    with pytest.raises(CheckpointFormatError) as info:
        read_torch_state_dict(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_file_is_reported(tmp_path):
    assert "no such file" in _error(tmp_path / "absent.pth")


def test_truncated_golden_copy_is_reported_without_touching_the_original(tmp_path):
    golden = shared_path("golden", "unet2d_tiny_Network.pth")
    original = golden.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(original[: len(original) // 2])
    assert "truncated" in _error(truncated)
    assert golden.read_bytes() == original


def test_empty_file_is_reported(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert "is empty" in _error(path)


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(b"\x00" + np.random.default_rng(0).bytes(4096))
    assert "not a PyTorch checkpoint" in _error(path)


def test_legacy_torch_file_asks_for_a_resave(tmp_path):
    path = tmp_path / "legacy.pth"
    # Pre-1.6 torch.save began with a protocol-2 pickle of this magic number.
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x00" * 64)
    message = _error(path)
    assert "legacy" in message and "_use_new_zipfile_serialization=True" in message


def test_empty_zip_and_zip_without_data_pkl_are_reported(tmp_path):
    empty = tmp_path / "empty.pth"
    zipfile.ZipFile(empty, "w").close()
    assert "data.pkl" in _error(empty)
    other = tmp_path / "other.pth"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", b"\x00" * 16)
    assert "data.pkl" in _error(other)


def test_storage_blob_shorter_than_tensor_is_reported(tmp_path):
    obj = {"w": Tensor("0", "FloatStorage", 6, 1, (2, 3), (3, 1))}
    path = _write_checkpoint(tmp_path / "short.pth", obj, {"0": np.zeros(6, np.float32).tobytes()})
    message = _error(path)
    assert "'w'" in message and "needs 7" in message and "holds only 6" in message


def test_storage_blob_shorter_than_declared_is_reported(tmp_path):
    obj = {"w": Tensor("0", "FloatStorage", 8, 0, (2, 2), (2, 1))}
    path = _write_checkpoint(tmp_path / "cut.pth", obj, {"0": np.zeros(5, np.float32).tobytes()})
    message = _error(path)
    assert "data/0" in message and "declares 8" in message


def test_missing_storage_blob_is_reported(tmp_path):
    obj = {"w": Tensor("5", "FloatStorage", 4, 0, (4,), (1,))}
    message = _error(_write_checkpoint(tmp_path / "noblob.pth", obj, {}))
    assert "archive/data/5" in message


def test_pickle_referencing_os_system_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "executed"
    payload = (b"\x80\x02" + _global("os", "system") + b"(" + _str(f"touch {marker}") + b"tR.")
    message = _error(_write_checkpoint(tmp_path / "evil.pth", None, {}, pickled=payload))
    assert "os.system" in message and "refusing" in message
    assert not marker.exists()


def test_pickled_module_object_is_refused(tmp_path):
    payload = (b"\x80\x02" + _global("torch.nn.modules.conv", "Conv2d") + b")\x81.")  # NEWOBJ
    assert "state_dict()" in _error(_write_checkpoint(tmp_path / "m.pth", None, {},
                                                      pickled=payload))


def test_damaged_pickle_is_reported(tmp_path):
    message = _error(_write_checkpoint(tmp_path / "bad.pth", None, {}, pickled=b"\x80\x02(X"))
    assert "data.pkl cannot be read" in message


# ----------------------------------------------------------------------------- optional torch
@pytest.mark.torch
def test_reader_agrees_with_torch_load(tmp_path):
    """Optional cross-check against PyTorch itself: `pip install -e ".[torch]"; pytest -m torch`."""
    import torch
    source = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"t": source.t()[1:], "h": source.to(torch.bfloat16), "i": torch.tensor(7),
             "p": torch.nn.Parameter(source[2])}
    path = tmp_path / "torch.pth"
    torch.save(saved, path)
    state = read_torch_state_dict(path)
    loaded = torch.load(path, weights_only=True)
    assert list(state) == list(loaded)
    for key, value in loaded.items():
        np.testing.assert_array_equal(state[key], value.detach().float().numpy()
                                      if value.dtype == torch.bfloat16 else value.detach().numpy())
