"""Lazy tensors: shape, dtype and size are known without reading data; arrays are read-only.

An edit never writes into a loaded tensor: it builds a new `ArrayTensor`. File-backed tensors
(`MappedTensor`: external data, and large weights stored inline in a model file) are
memory-mapped only when `numpy()` is called, and serde copies them file to file on save.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from graphsurg.ir import dtypes


class Tensor:
    """A constant tensor value. Subclasses decide where the bytes live."""

    dtype: int
    shape: tuple[int, ...]
    meta_blob: bytes | None = None  # serialized TensorProto fields the IR does not model (doc, metadata)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.dtype, self.size) if self.dtype != dtypes.BY_NAME["string"].code else 0

    def numpy(self) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dtypes.name_of(self.dtype)}{list(self.shape)})"


def _readonly(array: np.ndarray) -> np.ndarray:
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


class ArrayTensor(Tensor):
    """A tensor held in memory (made by passes, or decoded from a small proto)."""

    def __init__(self, array: np.ndarray, dtype: int | None = None):
        array = np.asarray(array)
        self.dtype = dtype if dtype is not None else dtypes.from_numpy(array.dtype)
        self.shape = tuple(int(d) for d in array.shape)
        self._array = _readonly(np.ascontiguousarray(array) if array.ndim else array)

    def numpy(self) -> np.ndarray:
        return self._array


class DeferredTensor(Tensor):
    """A tensor decoded on first use by a loader callback (serde uses it for protobuf data)."""

    def __init__(self, dtype: int, shape: tuple[int, ...], load: Callable[[], np.ndarray]):
        self.dtype = dtype
        self.shape = shape
        self._load = load
        self._array: np.ndarray | None = None

    def numpy(self) -> np.ndarray:
        if self._array is None:
            self._array = _readonly(self._load())
        return self._array


class DetachedTensor(Tensor):
    """An external tensor loaded without its data file (`serde.load(..., detach_external=True)`):
    dtype, shape and where the bytes are are known; reading them is an error."""

    def __init__(self, dtype: int, shape: tuple[int, ...], location: str, offset: int, length: int):
        self.dtype = dtype
        self.shape = shape
        self.location, self.offset, self.length = location, offset, length

    def numpy(self) -> np.ndarray:
        raise FileNotFoundError(f"external data in {self.location!r} was not loaded (detached)")


@dataclass(frozen=True)
class ExternalLocation:
    """Where a file-backed tensor's bytes are: an absolute file path, an offset and a length."""

    path: str
    offset: int
    length: int


class SourceFile:
    """A read-only descriptor on a weight file, shared by every tensor that reads from it.

    Holding the descriptor pins the file's contents: when a later save replaces the file by
    rename (saving a model over its own input), tensors loaded from it keep reading the original
    bytes. Closed when the last tensor using it is gone. A model split over more files than the
    process may keep open (half its descriptor limit, raised to the hard limit when needed) gets
    the rest unpinned: those files are opened for each read.
    """

    _open: weakref.WeakValueDictionary[tuple[int, int], SourceFile] = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __init__(self, path: str, fd: int | None):
        self.path = path
        self.fd = fd  # None: not pinned

    @classmethod
    def open(cls, path: str) -> SourceFile:
        """The shared handle of the file now at `path` (one descriptor per file identity)."""
        with cls._lock:
            if len(cls._open) >= _pin_budget():
                os.stat(path)  # still refuse a missing file here, as a pinned open would
                return cls(path, None)
        fd = _open_readonly(path)
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        with cls._lock:
            found = cls._open.get(key)
            if found is not None:
                os.close(fd)
                return found
            source = cls(path, fd)
            cls._open[key] = source
            return source

    @contextlib.contextmanager
    def descriptor(self) -> Iterator[int]:
        """A descriptor to read from: the pinned one, or one opened for this use."""
        if self.fd is not None:
            yield self.fd
            return
        fd = _open_readonly(self.path)
        try:
            yield fd
        finally:
            os.close(fd)

    def size(self) -> int:
        with self.descriptor() as fd:
            return os.fstat(fd).st_size

    def __del__(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError, TypeError):
                os.close(self.fd)


def _open_readonly(path: str) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def _pin_budget() -> int:
    """How many weight files may stay open: half the descriptor limit (raised to the hard limit
    the first time the budget is reached), leaving the rest to the process."""
    try:
        import resource
    except ImportError:  # not POSIX
        return 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = soft // 2
    if len(SourceFile._open) >= budget and hard != soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            budget = target // 2
    return budget


class MappedTensor(Tensor):
    """Bytes at an offset of a file; memory-mapped read-only on demand, never copied in full.

    Serde copies such tensors file to file on save (`copy_to`), so a round trip never holds them.
    """

    def __init__(self, dtype: int, shape: tuple[int, ...], location: ExternalLocation,
                 source: SourceFile | None = None):
        self.dtype = dtype
        self.shape = shape
        self.location = location
        self._source = source

    @property
    def source(self) -> SourceFile:
        if self._source is None:
            self._source = SourceFile.open(self.location.path)
        return self._source

    def numpy(self) -> np.ndarray:
        np_dtype = dtypes.numpy_dtype(self.dtype)
        if self.size == 0 or self.location.length == 0:
            return _readonly(np.zeros(self.shape, np_dtype))
        start = self.location.offset - self.location.offset % mmap.ALLOCATIONGRANULARITY
        skip = self.location.offset - start
        with self.source.descriptor() as fd:
            mapped = mmap.mmap(fd, skip + self.location.length, offset=start, access=mmap.ACCESS_READ)
        raw = np.frombuffer(mapped, dtype=np.uint8, count=self.location.length, offset=skip)
        count = self.location.length // np_dtype.itemsize
        return _readonly(raw.view(np_dtype)[:count].reshape(self.shape))

    def copy_to(self, out_fd: int) -> None:
        """Append this tensor's bytes to an open file, kernel to kernel where the OS allows."""
        with self.source.descriptor() as fd:
            copy_range(fd, self.location.offset, self.location.length, out_fd)


class ExternalTensor(MappedTensor):
    """A tensor stored in an external data file (ONNX `data_location: EXTERNAL`)."""


_CHUNK = 16 << 20


def copy_range(src_fd: int, offset: int, length: int, out_fd: int) -> None:
    """Copy `length` bytes from `src_fd` at `offset` to the current position of `out_fd`."""
    remaining = length
    if hasattr(os, "copy_file_range"):
        try:
            while remaining:
                done = os.copy_file_range(src_fd, out_fd, min(remaining, 1 << 30), offset + length - remaining)
                if done == 0:
                    break
                remaining -= done
        except OSError:
            pass
    position = offset + length - remaining
    while remaining:
        chunk = os.pread(src_fd, min(remaining, _CHUNK), position)
        if not chunk:
            raise OSError(f"external data ends early at byte {position}")
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view):]
        position += len(chunk)
        remaining -= len(chunk)
