"""ONNX element types without importing onnx: codes, names, numpy dtypes and bit widths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ElemType:
    code: int
    name: str
    numpy: np.dtype | None
    bits: int


def _entry(code: int, name: str, np_name: str | None, bits: int) -> ElemType:
    return ElemType(code, name, np.dtype(np_name) if np_name else None, bits)


_TYPES = [
    _entry(1, "float32", "float32", 32),
    _entry(2, "uint8", "uint8", 8),
    _entry(3, "int8", "int8", 8),
    _entry(4, "uint16", "uint16", 16),
    _entry(5, "int16", "int16", 16),
    _entry(6, "int32", "int32", 32),
    _entry(7, "int64", "int64", 64),
    _entry(8, "string", "object", 0),
    _entry(9, "bool", "bool", 8),
    _entry(10, "float16", "float16", 16),
    _entry(11, "float64", "float64", 64),
    _entry(12, "uint32", "uint32", 32),
    _entry(13, "uint64", "uint64", 64),
    _entry(14, "complex64", "complex64", 64),
    _entry(15, "complex128", "complex128", 128),
    # Types numpy has no native dtype for are carried as raw bytes (uint8/uint16 views).
    _entry(16, "bfloat16", "uint16", 16),
    _entry(17, "float8e4m3fn", "uint8", 8),
    _entry(18, "float8e4m3fnuz", "uint8", 8),
    _entry(19, "float8e5m2", "uint8", 8),
    _entry(20, "float8e5m2fnuz", "uint8", 8),
    _entry(21, "uint4", "uint8", 4),
    _entry(22, "int4", "int8", 4),
    _entry(23, "float4e2m1", "uint8", 4),
    _entry(24, "float8e8m0", "uint8", 8),
    _entry(25, "uint2", "uint8", 2),
    _entry(26, "int2", "int8", 2),
]
BY_CODE = {t.code: t for t in _TYPES}
BY_NAME = {t.name: t for t in _TYPES}
_FROM_NUMPY = {
    t.numpy: t.code
    for t in _TYPES
    if t.numpy is not None and t.code in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15)
}
_FROM_NUMPY[np.dtype(object)] = 8  # numpy keeps ONNX string tensors as object arrays
FLOAT, UINT8, INT8, INT32, INT64, BOOL, FLOAT16, DOUBLE = 1, 2, 3, 6, 7, 9, 10, 11
FLOAT_CODES = frozenset({1, 10, 11, 16})


def name_of(code: int | None) -> str:
    if code is None:
        return "?"
    entry = BY_CODE.get(code)
    return entry.name if entry else f"type{code}"


def numpy_dtype(code: int) -> np.dtype:
    entry = BY_CODE.get(code)
    if entry is None or entry.numpy is None:
        raise ValueError(f"element type {code} has no numpy equivalent")
    return entry.numpy


def from_numpy(dtype: np.dtype | type) -> int:
    dtype = np.dtype(dtype)
    if dtype not in _FROM_NUMPY:
        raise ValueError(f"numpy dtype {dtype} has no ONNX element type")
    return _FROM_NUMPY[dtype]


def nbytes(code: int, count: int) -> int:
    """Storage size of `count` elements; sub-byte types pack two (or four) per byte."""
    entry = BY_CODE.get(code)
    if entry is None or entry.bits == 0:
        raise ValueError(f"element type {name_of(code)} has no fixed size")
    return (count * entry.bits + 7) // 8
