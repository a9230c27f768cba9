"""Training logs: a JSON-lines metrics file and TensorBoard event files written without TensorFlow.

TensorBoard's own writers need TensorFlow (flax.metrics.tensorboard) or extra packages (tensorboardX, clu);
none is a dependency of this project, and the event format is small: TFRecord framing (length, masked
CRC32C) around hand-encoded ``Event`` protocol buffers holding scalar or PNG image summaries. This
writer covers exactly that and nothing else.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib

import numpy as np
from etils import epath

# --- CRC32C (Castagnoli), as TFRecord framing requires -----------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protocol buffer wire encoding (only what Event/Summary need) --------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _field_double(number: int, value: float) -> bytes:
    return _varint((number << 3) | 1) + struct.pack("<d", value)


def _field_float(number: int, value: float) -> bytes:
    return _varint((number << 3) | 5) + struct.pack("<f", value)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W), (H, W, 1) or (H, W, 3) array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG encoding needs uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        color_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[-1] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"PNG encoding needs (H, W[, 1 or 3]), got {image.shape}")
    h, w = image.shape[:2]
    rows = image.reshape(h, w * channels)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def appends_in_place(path: str | os.PathLike) -> bool:
    """Whether files at ``path`` can be appended to cheaply: local paths yes, object stores (gs://, s3://,
    any ``scheme://``) no - there an append re-uploads the whole object."""
    return "://" not in str(path)


class EventWriter:
    """TensorBoard scalar and image summaries in ``events.out.tfevents.*`` files in logdir.

    Local logdirs: one file, appended and flushed event by event (TensorBoard sees them live). Object
    stores (see appends_in_place): events are buffered and every ``flush()`` uploads them as one new file
    (TensorBoard reads all event files of a directory in name order).
    """

    def __init__(self, logdir: str | os.PathLike, append: bool | None = None):
        self.logdir = epath.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._append = appends_in_place(logdir) if append is None else append
        # The event file (local), or the prefix of the uploaded parts <path>.000000, .000001, ...
        self.path = self.logdir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._parts = 0
        self._buffer = bytearray()
        self._file = open(self.path, "ab") if self._append else None
        self._write_event(_field_double(1, time.time()) + _field_bytes(3, b"brain.Event:2"))

    def _write_event(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        record = (header + struct.pack("<I", masked_crc32c(header)) + event + struct.pack("<I", masked_crc32c(event)))
        if self._file is not None:
            self._file.write(record)
            self._file.flush()
        else:
            self._buffer += record

    def _write_value(self, step: int, value: bytes) -> None:
        summary = _field_bytes(1, value)
        self._write_event(_field_double(1, time.time()) + _field_varint(2, int(step)) + _field_bytes(5, summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write_value(step, _field_bytes(1, tag.encode()) + _field_float(2, float(value)))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image: uint8 (H, W[, C]) with C in {1, 3}."""
        image = np.asarray(image)
        h, w = image.shape[:2]
        channels = 1 if image.ndim == 2 else image.shape[-1]
        proto = (_field_varint(1, h) + _field_varint(2, w) + _field_varint(3, channels)
                 + _field_bytes(4, encode_png(image)))
        self._write_value(step, _field_bytes(1, tag.encode()) + _field_bytes(4, proto))

    def flush(self) -> None:
        """Uploads the buffered events (object stores; local events are already on disk)."""
        if self._buffer:
            self.path.with_name(f"{self.path.name}.{self._parts:06d}").write_bytes(bytes(self._buffer))
            self._parts += 1
            self._buffer.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()


def to_uint8(image: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Maps [lo, hi] linearly to 0..255 (clipped, rounded)."""
    scaled = (np.asarray(image, np.float32) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


class MetricsLog:
    """``metrics.jsonl`` in the workdir: one JSON object per logged step.

    On resume from step s, entries after s (written after the restored checkpoint) are dropped so the
    file always describes one consistent run. Local files get every line appended at once; on object stores
    (see appends_in_place) lines are kept in memory and the file is rewritten at every ``flush()`` (the
    trainer flushes at each checkpoint save, so what a resume keeps is always there).
    """

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, enabled: bool = True,
                 append: bool | None = None):
        self.path = epath.Path(path)
        self.enabled = enabled
        self._append = appends_in_place(path) if append is None else append
        self._lines: list[str] = []   # object stores: the whole file, rewritten at flush()
        self._unflushed = False
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [json.dumps(e) + "\n" for e in read_metrics(self.path) if e.get("step", 0) <= resume_step]
            self.path.write_text("".join(kept))
            self._lines = [] if self._append else kept
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n"
        if self._append:
            with open(self.path, "a") as f:
                f.write(line)
        else:
            self._lines.append(line)
            self._unflushed = True

    def flush(self) -> None:
        """Uploads the lines written since the last flush (object stores; local lines are already there)."""
        if self.enabled and self._unflushed:
            self.path.write_text("".join(self._lines))
            self._unflushed = False


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All entries of a metrics.jsonl file, in order. A last line cut short by a crash is left out; a
    damaged line elsewhere is an error naming the file and the line."""
    lines = [line for line in epath.Path(path).read_text().splitlines() if line.strip()]
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except ValueError as err:
            if number == len(lines):   # torn by a kill while appending
                break
            raise ValueError(f"{path}: line {number} is not JSON ({err}); the file is damaged - delete it or "
                             "remove that line") from err
    return entries
