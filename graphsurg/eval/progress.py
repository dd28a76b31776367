"""A small progress bar on stderr for long runs; silent with --quiet or when stderr is not a TTY."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# A run that finishes within this many seconds never shows a bar (short runs stay quiet).
_SHOW_AFTER_S = 0.5
_REFRESH_S = 0.1


class Progress:
    """Counts steps of `total`; draws `label [####....] i/total` at most every 0.1 s once a run is long."""

    def __init__(self, total: int, label: str = "eval", enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total, self.label = max(0, total), label
        self.enabled = enabled and _is_tty(self.stream)
        self.done = 0
        self._start = time.perf_counter()
        self._drawn_at = 0.0
        self._shown = False

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._start >= _SHOW_AFTER_S and now - self._drawn_at >= _REFRESH_S:
            self._draw()
            self._drawn_at = now

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total if self.total else width
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Clears the bar's line so later output starts on a clean line."""
        if self._shown:
            self.stream.write("\r" + " " * (len(self.label) + 50) + "\r")
            self.stream.flush()
            self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
