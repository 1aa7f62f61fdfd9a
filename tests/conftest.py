from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.procs import Proc, free_port, start_ferryman, start_origin


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; all stopped by PID when it ends."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def origin(procs: list[Proc]) -> Callable[..., Proc]:
    def make(port: int | None = None, name: str = "origin") -> Proc:
        p = start_origin(port or free_port(), name)
        procs.append(p)
        return p

    return make


@pytest.fixture
def ferryman(procs: list[Proc]) -> Callable[..., Proc]:
    def make(config: str, port: int | None, *extra: str, workers: int = 1) -> Proc:
        p = start_ferryman(config, ("127.0.0.1", port) if port else None, *extra, workers=workers)
        procs.append(p)
        return p

    return make
