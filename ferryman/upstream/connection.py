"""One connection to an upstream server, lent by the pool to one exchange at a time.

Reads land in one buffer shared by every upstream connection of the worker, and are copied
out of it at once. While the response's body may be spliced (plain sockets on both sides,
no body filter that could take it), the connection reads a head at a time: a large body then
stays in the kernel and goes from this socket to the client's without entering Python (see
:mod:`ferryman.server.splicing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol, cast

from ferryman.http.h1 import PASS_THROUGH_MIN, ParseError, ResponseHead, ResponseParser
from ferryman.server import splicing
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
    def splice_body(self, fd: int, count: int) -> int:
        """Send on up to ``count`` body bytes waiting on socket ``fd`` without reading them;
        returns how many went (0 when they cannot: they are then read as usual)."""
        ...


class _Discard:
    """The sink of a connection nobody owns: whatever it still parses goes nowhere."""

    def on_response(self, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes | memoryview) -> None:
        pass

    def on_response_end(self, keep_alive: bool) -> None:
        pass


_DISCARD: Final = _Discard()

# uvloop's own read size. The buffer is shared: a read is copied out before the next one.
_BUFFER: Final = memoryview(bytearray(262144))
# Most heads fit, and the head as sent on plus the body bytes read with it still fit the one
# page of pipe that goes before a spliced body. Measured: a second page there split the
# response in two packets to the client and made the splice cost six times as much.
_HEAD_READ: Final = 2048
_HEAD_BUFFER: Final = _BUFFER[:_HEAD_READ]


class UpstreamConnection(asyncio.BufferedProtocol):
    __slots__ = (
        "_deadline",
        "_fd",
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
        "splicing",
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
        self._fd = -1  # the socket, when its bytes can be spliced (plain TCP on Linux)
        self.splicing = False  # the owner may take bodies by splice: read heads alone

    def attach(self, owner: Owner, method: str, splice: bool = False) -> None:
        self.owner = owner
        self.requests += 1
        parser = self.parser
        if parser is None:
            parser = self.parser = ResponseParser(owner)
        else:
            parser.sink = owner
        parser.expect(method)
        self.splicing = splice and self._fd >= 0
        parser.pass_min = _HEAD_READ if self.splicing else PASS_THROUGH_MIN

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
        self.splicing = False
        if self.parser is not None:
            self.parser.sink = _DISCARD

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # asyncio.BufferedProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._fd = splicing.socket_fd(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        parser = self.parser
        if self.splicing and parser is not None and (parser.body_left or not parser.begun):
            return _HEAD_BUFFER
        return _BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(_BUFFER[:nbytes].tobytes())

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
        if parser.body_left and self.splicing and self.owner is owner:
            self._splice(owner, parser, len(data) < _HEAD_READ)
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

    def _splice(self, owner: Owner, parser: ResponseParser, drained: bool) -> None:
        """The rest of a body passing through is still in the socket: send it on from there,
        behind what this read gave the client already."""
        taken = owner.splice_body(self._fd, parser.body_left)
        if not taken:
            # Refused (a body filter, a client with bytes still to take), or nothing more has
            # come yet: the rest of this response is read as usual, in full-sized reads.
            self.splicing = False
            parser.pass_min = PASS_THROUGH_MIN
            return
        # Bytes after the response mean the upstream is out of step. After a full read the
        # loop reads again at once and finds them (unless reading was paused meanwhile);
        # otherwise, ask the socket.
        transport = self.transport
        paused = transport is None or not transport.is_reading()
        if taken >= parser.body_left and (drained or paused):
            parser.passed(taken, splicing.waiting(self._fd) > 0)
        else:
            parser.passed(taken)

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
