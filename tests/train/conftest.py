"""The train tests need torch; they run single-threaded so timings stay stable on a shared machine
(several torch threads on two busy cores spin rather than compute)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
