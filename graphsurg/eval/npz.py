"""Reading `.npz` members row range by row range, without loading a large file whole.

`np.load(path, mmap_mode='r')` ignores `mmap_mode` for `.npz` archives (every member is read in
full on access), so this module opens the zip itself:
- a stored (uncompressed) member is memory-mapped at its offset inside the archive;
- a deflated member cannot be mapped; small ones are decompressed once into memory, large ones
  are streamed: rows are decompressed sequentially, batch by batch, and a new pass over the data
  decompresses again from the start (the price of not holding the whole array).
"""

from __future__ import annotations

import logging
import struct
import zipfile
from pathlib import Path

import numpy as np

from graphsurg.errors import BadInputError

log = logging.getLogger(__name__)

# Deflated members up to this many bytes (uncompressed) are decompressed once and kept in memory.
STREAM_THRESHOLD = 64 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class DeflatedRows:
    """A read-only, array-like view of a compressed `.npy` member that decompresses rows on demand.

    Supports `shape`, `dtype`, `len()` and slicing along axis 0 with step 1; reads are cheapest in
    increasing order (each batch continues where the previous one stopped).
    """

    def __init__(self, archive: Path, member: str, shape: tuple[int, ...], dtype: np.dtype):
        self.archive, self.member = archive, member
        self.shape, self.dtype = shape, dtype
        self.ndim = len(shape)
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._stream = None
        self._zip: zipfile.ZipFile | None = None
        self._row = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("DeflatedRows supports row slices only")
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise TypeError("DeflatedRows supports contiguous row slices only")
        stop = max(start, stop)
        if self._stream is None or start < self._row:
            self._reopen()
        self._skip(start - self._row)
        data = self._read((stop - start) * self._row_bytes)
        self._row = stop
        return np.frombuffer(data, self.dtype).reshape((stop - start, *self.shape[1:]))

    def _reopen(self) -> None:
        self.close()
        self._zip = zipfile.ZipFile(self.archive)
        self._stream = self._zip.open(self.member)
        _read_npy_header(self._stream, f"{self.archive}:{self.member}")
        self._row = 0

    def _skip(self, rows: int) -> None:
        remaining = rows * self._row_bytes
        while remaining:
            remaining -= len(self._read(min(remaining, 16 << 20)))
        self._row += rows

    def _read(self, count: int) -> bytes:
        data = self._stream.read(count) if count else b""
        if len(data) != count:
            raise BadInputError(f"{self.archive}: member {self.member!r} ends early (truncated archive?)")
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._zip.close()
        self._stream = self._zip = None


def _read_npy_header(handle, label: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise BadInputError(f"{label}: .npy format version {version} is not supported (re-save with numpy)")
        shape, fortran, dtype = reader(handle)
    except ValueError as exc:
        raise BadInputError(f"{label}: not a valid .npy member ({exc})") from None
    if dtype.hasobject:
        raise BadInputError(f"{label}: holds Python objects (pickled); only numeric arrays are accepted")
    return tuple(shape), fortran, dtype


def open_npz(path: str | Path) -> dict[str, np.ndarray | DeflatedRows]:
    """The arrays of an `.npz` file by key (the `.npy` suffix dropped), mapped or streamed."""
    archive = Path(path)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if info.filename.endswith(".npy")]
            return {info.filename[:-4]: _open_member(archive, zf, info) for info in members}
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInputError(f"{archive}: not a readable .npz archive ({exc})") from None


def _open_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray | DeflatedRows:
    label = f"{archive}:{info.filename}"
    with zf.open(info) as handle:
        shape, fortran, dtype = _read_npy_header(handle, label)
        header_len = handle.tell()
    if info.compress_type == zipfile.ZIP_STORED:
        return _mapped(archive, info, header_len, shape, fortran, dtype)
    if info.file_size <= STREAM_THRESHOLD or fortran or not shape:
        if info.file_size > STREAM_THRESHOLD:
            log.warning("%s: Fortran-ordered or 0-d; it is decompressed whole into memory", label)
        with zf.open(info) as handle:
            return np.lib.format.read_array(handle, allow_pickle=False)
    return DeflatedRows(archive, info.filename, shape, dtype)


def _mapped(archive: Path, info: zipfile.ZipInfo, header_len: int, shape, fortran: bool, dtype: np.dtype):
    """A read-only memmap of a stored member: local header + name + extra field, then the .npy."""
    with open(archive, "rb") as raw:
        raw.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise BadInputError(f"{archive}: corrupt zip entry for {info.filename!r}")
    name_len, extra_len = fields[-2], fields[-1]
    offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + header_len
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(archive, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
