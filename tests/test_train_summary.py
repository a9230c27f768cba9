"""TensorBoard event files written without TensorFlow, PNG encoding, and the metrics log."""

import struct

import numpy as np
import pytest

from emdiffuse_jax import summary


def _records(path):
    """TFRecord framing: (length, masked crc of length, payload, masked crc of payload)."""
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == summary.masked_crc32c(header)
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == summary.masked_crc32c(payload)
        out.append(payload)
        pos += 16 + length
    return out


def _fields(message):
    """Top-level protobuf fields as {number: [values]} (varint, 64-bit, length-delimited, 32-bit)."""
    fields, pos = {}, 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1:
            value, pos = message[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(message, pos)
            value, pos = message[pos:pos + size], pos + size
        else:
            value, pos = message[pos:pos + 4], pos + 4
        fields.setdefault(number, []).append(value)
    return fields


def _varint(buf, pos):
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def test_crc32c_matches_the_castagnoli_check_value():
    assert summary.crc32c(b"123456789") == 0xE3069283


def test_png_encoding_round_trips_through_a_png_decoder():
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for image in [rng.integers(0, 256, (7, 5), dtype=np.uint8), rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)]:
        np.testing.assert_array_equal(iio.imread(summary.encode_png(image), extension=".png"), image)


def test_event_file_holds_framed_scalar_and_image_summaries(tmp_path):
    writer = summary.EventWriter(tmp_path)
    writer.scalar("train/loss", 0.25, step=7)
    writer.image("val/0", np.full((4, 6), 200, np.uint8), step=8)
    writer.close()
    events = [_fields(r) for r in _records(writer.path)]
    assert events[0][3] == [b"brain.Event:2"]
    scalar_event, image_event = events[1], events[2]
    assert scalar_event[2] == [7]
    value = _fields(_fields(scalar_event[5][0])[1][0])
    assert value[1] == [b"train/loss"] and struct.unpack("<f", value[2][0])[0] == 0.25
    assert image_event[2] == [8]
    image = _fields(_fields(_fields(image_event[5][0])[1][0])[4][0])
    assert (image[1], image[2], image[3]) == ([4], [6], [1]) and image[4][0].startswith(b"\x89PNG")


def test_metrics_log_drops_entries_after_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = summary.MetricsLog(path)
    for step in (1, 2, 3):
        log.write(step, loss=step / 10)
    summary.MetricsLog(path, resume_step=2).write(3, loss=0.5)
    assert [(e["step"], e["loss"]) for e in summary.read_metrics(path)] == [(1, 0.1), (2, 0.2), (3, 0.5)]
    summary.MetricsLog(path)   # a fresh run starts a new file
    assert not path.exists()


def test_object_store_logs_are_uploaded_at_flush_not_per_line(tmp_path):
    """On gs:// and other stores without appends: nothing per line; one rewrite / one new event file per
    flush (the trainer flushes at every checkpoint); a resume keeps the lines up to its step."""
    assert summary.appends_in_place(tmp_path) and not summary.appends_in_place("gs://bucket/run")
    path = tmp_path / "metrics.jsonl"
    log = summary.MetricsLog(path, append=False)
    log.write(1, loss=0.1)
    log.write(2, loss=0.2)
    assert not path.exists()
    log.flush()
    log.write(3, loss=0.3)
    assert [e["step"] for e in summary.read_metrics(path)] == [1, 2]
    log.flush()
    resumed = summary.MetricsLog(path, resume_step=2, append=False)
    resumed.write(3, loss=0.5)
    resumed.flush()
    assert [(e["step"], e["loss"]) for e in summary.read_metrics(path)] == [(1, 0.1), (2, 0.2), (3, 0.5)]

    writer = summary.EventWriter(tmp_path / "tb", append=False)
    writer.scalar("train/loss", 0.25, step=7)
    assert not list((tmp_path / "tb").iterdir())
    writer.flush()
    writer.scalar("train/loss", 0.5, step=8)
    writer.close()
    parts = sorted((tmp_path / "tb").iterdir())
    assert [p.name[-6:] for p in parts] == ["000000", "000001"]
    steps = [_fields(r).get(2) for p in parts for r in _records(p)]
    assert steps == [None, [7], [8]]   # the file-version event, then one scalar per part


def test_a_last_line_torn_by_a_crash_is_dropped_and_a_damaged_one_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.1}\n{"step": 2, "loss": 0.2}\n{"step": 3, "lo')
    assert [e["step"] for e in summary.read_metrics(path)] == [1, 2]
    summary.MetricsLog(path, resume_step=2).write(3, loss=0.5)
    assert [(e["step"], e["loss"]) for e in summary.read_metrics(path)] == [(1, 0.1), (2, 0.2), (3, 0.5)]
    path.write_text('{"step": 1, "loss": 0.1}\n{"step": 2, oops}\n{"step": 3, "loss": 0.3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl: line 2 is not JSON"):
        summary.read_metrics(path)
