"""Scalars out of TensorBoard event files, without TensorBoard, TensorFlow or torch.

The trainer logs what one checkpoint cost the loop as ``checkpoint/stall_seconds``; the runner reads
it back from the run URI to choose a checkpoint interval. An event file is a sequence of TFRecords
(length, its checksum, an ``Event`` protobuf, its checksum); the few protobuf fields needed here
are decoded by hand (wire format: https://protobuf.dev/programming-guides/encoding/). Checksums
are not verified (crc32c is not in the standard library): a torn last record, from a file that was
being written, is dropped by its length instead."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

# Event (tensorflow/core/util/event.proto): wall_time = 1 (double), step = 2 (int64), summary = 5.
# Summary: value = 1 (repeated). Summary.Value: tag = 1, simple_value = 2 (float), tensor = 8.
# TensorProto: float_val = 5, double_val = 6 (new-style scalars keep their value there).
_EVENT_WALL, _EVENT_STEP, _EVENT_SUMMARY = 1, 2, 5
_VALUE_TAG, _VALUE_SIMPLE, _VALUE_TENSOR = 1, 2, 8
_TENSOR_FLOAT, _TENSOR_DOUBLE = 5, 6
#: ``events.out.tfevents.<unix seconds>.<host>...``: the time the writer was created.
_FILE_TIME = re.compile(r"tfevents\.(\d+)\.")


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    wall_time: float
    value: float


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message; length-delimited values come as bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:  # groups (3, 4) are not used by event files
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _tensor_value(buf: bytes) -> float | None:
    for number, wire, value in _fields(buf):
        if number == _TENSOR_FLOAT:
            return struct.unpack("<f", value[:4])[0] if wire == 2 else struct.unpack("<f", value)[0]
        if number == _TENSOR_DOUBLE:
            return struct.unpack("<d", value[:8])[0]
    return None


def records(data: bytes) -> Iterator[bytes]:
    """The payloads of a TFRecord file; stops at a torn record."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        start = pos + 12
        if start + length + 4 > len(data):
            return
        yield data[start : start + length]
        pos = start + length + 4


def scalars(data: bytes, tags: set[str] | None = None) -> Iterator[Scalar]:
    """Every scalar in one event file (optionally only those tagged with one of ``tags``)."""
    for record in records(data):
        try:
            wall, step, summary = 0.0, 0, None
            for number, _wire, value in _fields(record):
                if number == _EVENT_WALL:
                    wall = struct.unpack("<d", value)[0]
                elif number == _EVENT_STEP:
                    step = value
                elif number == _EVENT_SUMMARY:
                    summary = value
            if summary is None:
                continue
            for number, _wire, value in _fields(summary):
                if number != 1:
                    continue
                tag, scalar = None, None
                for vnum, _vwire, v in _fields(value):
                    if vnum == _VALUE_TAG:
                        tag = v.decode("utf-8", "replace")
                    elif vnum == _VALUE_SIMPLE:
                        scalar = struct.unpack("<f", v)[0]
                    elif vnum == _VALUE_TENSOR:
                        scalar = _tensor_value(v)
                if tag is not None and scalar is not None and (tags is None or tag in tags):
                    yield Scalar(tag, int(step), float(wall), float(scalar))
        except (IndexError, ValueError, struct.error):
            continue  # a record that is not an event we understand: skip it, keep the rest


def file_created(name: str) -> float | None:
    """When an event file's writer started, from its name (``events.out.tfevents.<seconds>...``)."""
    m = _FILE_TIME.search(name)
    return float(m.group(1)) if m else None
