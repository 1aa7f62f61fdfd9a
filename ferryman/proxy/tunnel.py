"""Byte tunnels between a client and an upstream (WebSocket after 101, CONNECT after 200).

Each side's protocol hands its bytes to the :class:`Splice`, which writes them to the other
side and pauses the sender while the receiver's write buffer is full. A tunnel with no bytes
either way for ``idle_timeout`` seconds is closed.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ferryman.http.headers import HeaderList
from ferryman.proxy.api import Downstream


class UpstreamSide(Protocol):
    transport: asyncio.Transport | None
    tunnel: Splice | None

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class Splice:
    __slots__ = (
        "_closed",
        "_downstream",
        "_idle_timeout",
        "_last",
        "_timer",
        "_upstream",
        "bytes_down",
        "bytes_up",
    )

    def __init__(
        self,
        downstream: Downstream,
        upstream: UpstreamSide,
        leftover: bytes,
        idle_timeout: float,
        status: int = 101,
        headers: HeaderList | None = None,
    ) -> None:
        self._downstream = downstream
        self._upstream = upstream
        self._idle_timeout = idle_timeout
        self._closed = False
        self.bytes_up = 0
        self.bytes_down = 0
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(idle_timeout, self._on_timer)
        upstream.tunnel = self
        buffered = downstream.start_tunnel(self, status, headers or [])
        if leftover:
            self.from_upstream(leftover)
        if buffered:
            self.from_client(buffered)

    def from_client(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self._last = asyncio.get_running_loop().time()
        self._upstream.write(data)

    def from_upstream(self, data: bytes | memoryview) -> None:
        self.bytes_down += len(data)
        self._last = asyncio.get_running_loop().time()
        self._downstream.tunnel_write(data)

    def client_pause_writing(self) -> None:
        t = self._upstream.transport
        if t is not None:
            t.pause_reading()

    def client_resume_writing(self) -> None:
        t = self._upstream.transport
        if t is not None:
            t.resume_reading()

    def upstream_pause_writing(self) -> None:
        self._downstream.pause_reading()

    def upstream_resume_writing(self) -> None:
        self._downstream.resume_reading()

    def client_closed(self) -> None:
        self._close()

    def upstream_closed(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        self._upstream.close()
        self._downstream.tunnel_close()

    def _on_timer(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last
        if idle >= self._idle_timeout:
            self._close()
        else:
            self._timer = loop.call_later(self._idle_timeout - idle, self._on_timer)
