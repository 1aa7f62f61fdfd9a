"""Buffered log output: lines written during one event-loop turn leave in one write."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import IO


class LogWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._buf: list[bytes] = []
        self._scheduled = False

    def _open(self) -> IO[bytes]:
        if self._file is None:
            if self.path == "stdout":
                self._file = sys.stdout.buffer
            elif self.path == "stderr":
                self._file = sys.stderr.buffer
            else:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115 - lives as long as the writer
        return self._file

    def write(self, line: bytes) -> None:
        self._buf.append(line)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._buf:
            return
        data = b"".join(self._buf)
        self._buf.clear()
        f = self._open()
        try:
            f.write(data)
            f.flush()
        except OSError:
            pass

    def close(self) -> None:
        self.flush()
        if self._file is not None and self.path not in ("stdout", "stderr"):
            self._file.close()
        self._file = None


_writers: dict[str, LogWriter] = {}


def writer_for(path: str) -> LogWriter:
    """One writer per destination, so several routes logging to one file share its buffer."""
    w = _writers.get(path)
    if w is None:
        w = _writers[path] = LogWriter(path)
    return w


def flush_all() -> None:
    for w in _writers.values():
        w.flush()
