"""The reference side of a fidelity measurement, with a small cache of reference outputs.

Searches (the quantize fallback, `graphsurg run`'s minimal-surgery bisection) evaluate many
candidates against one unchanged reference on one dataset; re-running the reference every time
would double their cost. A finished reference run is therefore kept, keyed by the reference's
content (a hash of its serialized bytes, or a file's path, size and mtime), the data's identity
and everything that shapes the batches or the numerics (batch size, provider, threads). Runs with
exposed intermediates (per-layer) and opened `Dataset` objects are never cached.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graphsurg.eval.data import Batch
from graphsurg.eval.runner import Runner, model_bytes
from graphsurg.ir import Model

CACHE_ENTRIES = 4
CACHE_BYTES = 256 << 20  # a run whose reference outputs exceed this is not kept
_CACHE: OrderedDict[tuple, tuple[list[str], list[dict[str, np.ndarray]]]] = OrderedDict()


def clear_cache() -> None:
    _CACHE.clear()


def _file_key(path: str | os.PathLike) -> tuple:
    target = Path(path)
    if target.is_dir():  # a test-data folder: every file under it
        return (str(target.resolve()),) + tuple(
            (str(p.relative_to(target)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(target.rglob("*")) if p.is_file())
    stat = target.stat()
    return str(target.resolve()), stat.st_size, stat.st_mtime_ns


def cache_key(ref: Model | str | os.PathLike, data_path: str | None, batch_size: int, provider: str,
              threads: int | None, dims: Mapping[str, int] | None, samples: int, seed: int) -> tuple:
    """What identifies one reference run: model content, data identity, batching and numerics."""
    model = ("sha256", hashlib.sha256(model_bytes(ref)).hexdigest()) if isinstance(ref, Model) else _file_key(ref)
    if data_path is None:
        data: tuple = ("synthetic", samples, seed, tuple(sorted((dims or {}).items())))
    else:
        data = _file_key(data_path)
    return model, data, batch_size, provider, threads


class Reference:
    """Reference outputs batch by batch: replayed from the cache, or computed (and then cached)."""

    def __init__(self, ref: Model | str | os.PathLike, provider: str, threads: int | None, expose: bool,
                 key: tuple | None):
        self.key = None if expose else key
        cached = _CACHE.get(self.key) if self.key is not None else None
        self.runner: Runner | None = None
        self._replay: list[dict[str, np.ndarray]] | None = None
        self._record: list[dict[str, np.ndarray]] | None = None
        if cached is not None:
            _CACHE.move_to_end(self.key)
            self.output_names, self._replay = cached
            return
        self.runner = Runner(ref, provider, threads, expose=expose)
        self.output_names = list(self.runner.output_names)
        self._record = [] if self.key is not None else None
        self._bytes = 0

    @property
    def cached(self) -> bool:
        return self._replay is not None

    def outputs(self, index: int, batch: Batch) -> dict[str, Any]:
        """The reference's outputs for the `index`-th batch of the dataset."""
        if self._replay is not None:
            return self._replay[index]
        outputs = self.runner.run(batch.inputs)
        if self._record is not None:
            kept = {name: outputs[name] for name in self.output_names}
            self._bytes += sum(getattr(a, "nbytes", 0) for a in kept.values())
            if self._bytes <= CACHE_BYTES:
                self._record.append(kept)
            else:
                self._record = None  # too large to keep: this run is not cached
        return outputs

    def finish(self) -> None:
        """Keeps a complete run for the next evaluation against the same reference and data."""
        if self._record is None or self.key is None:
            return
        _CACHE[self.key] = (self.output_names, self._record)
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
