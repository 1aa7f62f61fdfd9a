"""One connection to an upstream server, lent by the pool to one exchange at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, cast

from ferryman.http.h1 import ParseError, ResponseHead, ResponseParser
from ferryman.server.deadline import Deadline

if TYPE_CHECKING:
    from ferryman.proxy.tunnel import Splice
    from ferryman.upstream.peer import Peer


class Owner(Protocol):
    """What an exchange borrowing a connection must handle."""

    def on_response(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes | memoryview) -> None: ...
    def on_response_end(self, keep_alive: bool) -> None: ...
    def on_upstream_upgrade(self, leftover: bytes) -> None: ...
    def on_upstream_lost(self, reason: str, clean: bool = False) -> None: ...
    def on_upstream_pause_writing(self) -> None: ...
    def on_upstream_resume_writing(self) -> None: ...
    def flush(self) -> None: ...
    def on_upstream_timeout(self) -> None: ...


class _Discard:
    """The sink of a connection nobody owns: whatever it still parses goes nowhere."""

    def on_response(self, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes | memoryview) -> None:
        pass

    def on_response_end(self, keep_alive: bool) -> None:
        pass


_DISCARD: Final = _Discard()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_deadline",
        "_read_timeout",
        "closed",
        "idle_since",
        "on_idle_close",
        "owner",
        "parser",
        "peer",
        "reading",
        "requests",
        "returning",
        "transport",
        "tunnel",
    )

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.owner: Owner | None = None
        self.parser: ResponseParser | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.on_idle_close: Callable[[UpstreamConnection], None] | None = None
        self.closed = False
        # While a read is parsed, a pool taking the connection back waits in ``returning``
        # for the rest of the read: bytes after the response mean it cannot be reused.
        self.reading = False
        self.returning: Callable[[UpstreamConnection], None] | None = None
        # Set when the connection has become a byte tunnel (WebSocket): data goes there.
        self.tunnel: Splice | None = None
        # The read timeout: one timer for the connection's life, moved by storing a deadline.
        self._read_timeout = 0.0
        self._deadline = Deadline(self._timed_out)

    def attach(self, owner: Owner, method: str) -> None:
        self.owner = owner
        self.requests += 1
        parser = self.parser
        if parser is None:
            parser = self.parser = ResponseParser(owner)
        else:
            parser.sink = owner
        parser.expect(method)

    def expect_data(self, timeout: float) -> None:
        """Time out if no bytes arrive for ``timeout`` seconds (0 stops the clock)."""
        self._read_timeout = timeout
        if timeout:
            self._deadline.arm(timeout)
        else:
            self._deadline.at = 0.0

    def pause(self) -> None:
        """The client is not keeping up: stop reading, and stop the read clock with it."""
        if self.transport is not None:
            self.transport.pause_reading()
        self._deadline.at = 0.0

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
        if self._read_timeout and self.owner is not None:
            self._deadline.arm(self._read_timeout)

    def _timed_out(self) -> None:
        if self.owner is not None and not self.closed:
            self.owner.on_upstream_timeout()

    def detach(self) -> None:
        self._deadline.at = 0.0
        self._read_timeout = 0.0
        self.owner = None
        if self.parser is not None:
            self.parser.sink = _DISCARD

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        owner = self.owner
        self._deadline.extend(self._read_timeout)
        if owner is None or self.parser is None:
            # Bytes from an idle upstream mean it is out of step with us: never reuse it.
            self.close()
            return
        parser = self.parser
        self.reading = True
        try:
            offset = parser.feed(data)
        except ParseError as e:
            self.reading = False
            self.close()
            owner.on_upstream_lost(f"invalid response from upstream: {e.reason}")
            return
        self.reading = False
        if parser.stray:
            # Bytes after the end of the response: the upstream is out of step with us.
            self.close()
        returning = self.returning
        if returning is not None:
            self.returning = None
            returning(self)
        if offset is not None:
            owner.on_upstream_upgrade(data[offset:])
        elif self.owner is owner:
            owner.flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deadline.close()
        if self.tunnel is not None:
            self.tunnel.upstream_closed()
            return
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.on_upstream_lost(
                str(exc) if exc else "upstream closed the connection", exc is None
            )
        elif self.on_idle_close is not None:
            self.on_idle_close(self)  # an idle connection the upstream closed frees its slot

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_pause_writing()
        elif self.owner is not None:
            self.owner.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_resume_writing()
        elif self.owner is not None:
            self.owner.on_upstream_resume_writing()
