"""Keep-alive connections to one upstream group's peers.

The pool keeps at most ``max_idle`` idle connections for the whole group (nginx's
``keepalive N``), newest first, and closes those idle longer than ``idle_timeout`` or that
have served ``max_requests``. A connection comes back only after a complete exchange; the
exchange decides that and calls :meth:`release` or closes it.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from mypy_extensions import mypyc_attr

from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.peer import Peer
from ferryman.upstream.tls import dial


# Subclassed by plain-Python code (plugins, the forward proxy) when this module is compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class Pool:
    def __init__(
        self,
        max_idle: int,
        idle_timeout: float,
        max_requests: int,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        # TLS toward peers marked ``https://`` (or all peers when the group says so).
        self.tls = tls
        self.server_name = server_name
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        # Per peer, oldest first: a list, since the sweep that pops from the front is rare.
        self._idle: dict[Peer, list[UpstreamConnection]] = {}
        self.idle_count = 0
        self.active = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"<Pool [Connections: {self.active} active, {self.idle_count} idle"
            f" | max_idle {self.max_idle}]>"
        )

    def acquire_idle(self, peer: Peer) -> UpstreamConnection | None:
        idle = self._idle.get(peer)
        while idle:
            conn = idle.pop()
            self.idle_count -= 1
            if not conn.closed:
                self.active += 1
                return conn
        return None

    async def connect(self, peer: Peer) -> UpstreamConnection:
        conn = await dial(peer, lambda: UpstreamConnection(peer), self.tls, self.server_name)
        conn.on_idle_close = self._idle_closed
        self.active += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Take back a connection whose last exchange was complete."""
        self.active -= 1
        conn.detach()
        if conn.reading:
            # Its response ended inside a read still being parsed: a pipelined request must
            # not take it before the rest of that read shows the upstream in step.
            conn.returning = self._keep
            return
        self._keep(conn)

    def _keep(self, conn: UpstreamConnection) -> None:
        if conn.closed or conn.requests >= self.max_requests or self.idle_count >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle = self._idle.get(conn.peer)
        if idle is None:
            idle = self._idle[conn.peer] = []
        idle.append(conn)
        self.idle_count += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout, self._sweep)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a connection lent out whose exchange did not end cleanly."""
        self.active -= 1
        conn.detach()
        conn.close()

    def _idle_closed(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.peer)
        if idle is not None and conn in idle:
            idle.remove(conn)
            self.idle_count -= 1

    def forget(self, conn: UpstreamConnection) -> None:
        """A lent connection that became a tunnel: no longer the pool's business."""
        self.active -= 1
        conn.detach()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() - self.idle_timeout
        for idle in self._idle.values():
            # Oldest first; stop at the first one still fresh.
            stale = 0
            while stale < len(idle) and (idle[stale].closed or idle[stale].idle_since <= deadline):
                idle[stale].close()
                stale += 1
            if stale:
                del idle[:stale]
                self.idle_count -= stale
        self._sweeper = (
            loop.call_later(max(self.idle_timeout / 4, 0.05), self._sweep)
            if self.idle_count
            else None
        )

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self.idle_count = 0
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
