"""Conversions between the IR's tensors (ONNX element codes, numpy arrays) and torch tensors."""

from __future__ import annotations

import numpy as np
import torch

from graphsurg.errors import BadInputError
from graphsurg.ir import dtypes

TORCH_DTYPES: dict[int, torch.dtype] = {
    dtypes.FLOAT: torch.float32, dtypes.UINT8: torch.uint8, dtypes.INT8: torch.int8, 4: torch.uint16,
    5: torch.int16, dtypes.INT32: torch.int32, dtypes.INT64: torch.int64, dtypes.BOOL: torch.bool,
    dtypes.FLOAT16: torch.float16, dtypes.DOUBLE: torch.float64, 12: torch.uint32, 13: torch.uint64,
    14: torch.complex64, 15: torch.complex128, 16: torch.bfloat16,
}
# Sub-byte integer types are carried unpacked in (u)int8 views by the IR; their value range is narrower.
INT_RANGES: dict[int, tuple[int, int]] = {
    dtypes.UINT8: (0, 255), dtypes.INT8: (-128, 127), 4: (0, 65535), 5: (-32768, 32767),
    dtypes.INT32: (-(2**31), 2**31 - 1), 21: (0, 15), 22: (-8, 7), 25: (0, 3), 26: (-2, 1),
}
_CARRIERS = {21: torch.uint8, 22: torch.int8, 25: torch.uint8, 26: torch.int8}
_TO_CODE = {v: k for k, v in TORCH_DTYPES.items()}


def torch_dtype(code: int | None) -> torch.dtype:
    """The torch dtype that carries ONNX element type `code` (sub-byte ints ride in 8-bit ints)."""
    found = TORCH_DTYPES.get(code) or _CARRIERS.get(code)  # type: ignore[arg-type]
    if found is None:
        raise BadInputError(f"element type {dtypes.name_of(code)} has no torch equivalent")
    return found


def onnx_code(dtype: torch.dtype) -> int:
    return _TO_CODE[dtype]


def to_torch(array: np.ndarray, code: int | None = None) -> torch.Tensor:
    """A torch tensor (a copy, so the IR's read-only arrays stay untouched) with ONNX type `code`."""
    array = np.asarray(array)
    if code == 16:  # bfloat16: the IR holds the raw bits as uint16
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    if array.dtype == object:
        raise BadInputError("string tensors are not supported by the training backend")
    tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.to(torch_dtype(code)) if code is not None else tensor


def to_numpy(tensor: torch.Tensor, code: int) -> np.ndarray:
    """An array laid out as the IR stores element type `code` (bfloat16 back to its uint16 bits)."""
    tensor = tensor.detach().cpu()
    if code == 16:
        return tensor.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return tensor.to(torch_dtype(code)).numpy()
