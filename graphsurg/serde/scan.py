"""Reads a model file without copying its large inline weights.

A model saved without external data keeps every weight in `raw_data` fields inside the one
protobuf message. Parsing it whole costs the file's size in memory (and the read buffer as much
again). Instead, this module walks the protobuf wire format of the memory-mapped file, cuts the
large `raw_data` payloads of the main graph's initializers out, and parses only the rest (the
"skeleton"). The payloads stay in the file: the loader turns them into file-backed tensors that
are memory-mapped on demand and copied file to file on save.

Anything unusual (a field repeated that protobuf would merge, a wire type ONNX does not use, a
length past the end of the file) makes `read_skeleton` return None, and the caller parses the
whole file the ordinary way, which also produces the ordinary error messages.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass

from graphsurg.ir import SourceFile

LIFT_MIN_BYTES = 4096  # smaller payloads are parsed with the rest: not worth a mapping each
SCAN_MIN_FILE_BYTES = 1 << 20  # smaller files are parsed whole

# Field numbers of onnx.proto (ModelProto.graph, GraphProto.initializer, TensorProto fields).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DATA_TYPE = 2
_TENSOR_RAW_DATA = 9
_TENSOR_DATA_LOCATION = 14
_TENSOR_TYPED_DATA = frozenset({4, 5, 6, 7, 10, 11})  # float_data ... uint64_data
# Element types whose raw bytes are read as a plain numpy view (no sub-byte packing, no strings).
LIFTABLE_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 24})


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class Skeleton:
    """The model's bytes without the lifted payloads, and where those payloads are in the file.

    `payloads` maps the index of a main-graph initializer to (file offset, length) of its raw data.
    """

    data: bytes
    source: SourceFile
    payloads: dict[int, tuple[int, int]]


def read_skeleton(path: str) -> Skeleton | None:
    """The skeleton of the model file at `path`, or None when the file is small, holds no large
    inline weights, or is not plainly laid out (parse it whole then)."""
    source = SourceFile.open(path)
    size = source.size()
    if size < SCAN_MIN_FILE_BYTES:
        return None
    with source.descriptor() as fd, mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
        try:
            built = _model_skeleton(buf, size)
        except _Malformed:
            return None
    if built is None:
        return None
    data, payloads = built
    return Skeleton(data, source, payloads)


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))  # most varints written (field keys, short lengths)


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) for each field."""
    pos = start
    while pos < end:
        field_start = pos
        key = buf[pos]
        if key < 0x80:  # one-byte keys and lengths are the common case: no call
            pos += 1
        else:
            key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed
        if wire == 0:
            value_start = pos
            if pos < end and buf[pos] < 0x80:
                pos += 1
            else:
                _, pos = _varint(buf, pos, end)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 2:
            if pos >= end:
                raise _Malformed
            length = buf[pos]
            if length < 0x80:
                value_start = pos + 1
            else:
                length, value_start = _varint(buf, pos, end)
            pos = value_start + length
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:  # groups: not used by ONNX
            raise _Malformed
        if pos > end:
            raise _Malformed
        yield number, wire, field_start, value_start, pos


def _model_skeleton(buf, size: int) -> tuple[bytes, dict[int, tuple[int, int]]] | None:
    graphs = [f for f in _fields(buf, 0, size) if f[0] == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0][1] != 2:
        return None  # no graph, or several that protobuf would merge
    _, _, field_start, value_start, value_end = graphs[0]
    pieces, payloads = _graph_skeleton(buf, value_start, value_end)
    if not payloads:
        return None
    graph_len = sum(len(p) for p in pieces)
    out = bytearray()
    out += buf[0:field_start]
    out += encode_varint(_MODEL_GRAPH << 3 | 2)
    out += encode_varint(graph_len)
    for piece in pieces:
        out += piece
    out += buf[value_end:size]
    return bytes(out), payloads


def _graph_skeleton(buf, start: int, end: int) -> tuple[list[bytes], dict[int, tuple[int, int]]]:
    pieces: list[bytes] = []
    payloads: dict[int, tuple[int, int]] = {}
    copied_to = start  # bytes [copied_to, field start) are unchanged and still to be copied
    index = 0
    for number, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if number != _GRAPH_INITIALIZER or wire != 2:
            continue
        # a tensor smaller than the lifting threshold cannot hold a payload worth lifting
        raw = _liftable_raw(buf, value_start, value_end) if value_end - value_start >= LIFT_MIN_BYTES else None
        if raw is not None:
            raw_field_start, raw_start, raw_end = raw
            tensor = bytes(buf[value_start:raw_field_start]) + bytes(buf[raw_end:value_end])
            pieces.append(bytes(buf[copied_to:field_start]))
            pieces.append(encode_varint(_GRAPH_INITIALIZER << 3 | 2) + encode_varint(len(tensor)) + tensor)
            copied_to = value_end
            payloads[index] = (raw_start, raw_end - raw_start)
        index += 1
    pieces.append(bytes(buf[copied_to:end]))
    return pieces, payloads


def _liftable_raw(buf, start: int, end: int) -> tuple[int, int, int] | None:
    """(field start, value start, value end) of a tensor's raw_data worth leaving in the file."""
    raw = None
    dtype = None
    for number, wire, field_start, value_start, value_end in _fields(buf, start, end):
        if number == _TENSOR_RAW_DATA:
            if raw is not None or wire != 2:
                return None
            raw = (field_start, value_start, value_end)
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            dtype = _varint(buf, value_start, value_end)[0]
        elif number == _TENSOR_DATA_LOCATION or number in _TENSOR_TYPED_DATA:
            return None  # external, or data in two places: leave it to the ordinary parser
    if raw is None or dtype not in LIFTABLE_TYPES or raw[2] - raw[1] < LIFT_MIN_BYTES:
        return None
    return raw
