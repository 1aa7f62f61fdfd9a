"""One HTTP/2 stream: the :class:`Downstream` a handler answers through, and the
:class:`pipeline.Side` the shared request pipeline starts it on.

A stream queues its response (head, body, trailers) and asks its :class:`H2Server` to send
what the flow-control windows allow (``pump``); the server owns the transport and the
``h2`` state machine, and reads the stream's queue directly.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from h2.errors import ErrorCodes

from ferryman.context import RequestContext, Response
from ferryman.filters.base import FilterChain
from ferryman.http.h2conn import response_block
from ferryman.http.headers import BODYLESS_STATUS, HeaderList
from ferryman.proxy.api import Exchange, Tunnel
from ferryman.routing.table import CompiledRoute, VirtualHost
from ferryman.server import pipeline

if TYPE_CHECKING:
    from ferryman.server.h2 import H2Server


class H2Stream:
    """One request/response exchange on an HTTP/2 connection."""

    __slots__ = (
        "_bodyless",
        "_ending",
        "_head",
        "_out",
        "_paused_handler",
        "_trailers",
        "_unacked",
        "buffered",
        "conn",
        "ctx",
        "exchange",
        "expected",
        "keep_alive",
        "pending",
        "request_done",
        "started",
        "stream_id",
        "vhost",
    )

    def __init__(self, conn: H2Server, stream_id: int, ctx: RequestContext) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.ctx = ctx
        self.vhost: VirtualHost | None = None
        self.exchange: Exchange | None = None
        self.keep_alive = True  # a stream never keeps anything; the pipeline may clear it
        self.pending: list[bytes] | None = None
        self.request_done = False
        self.started = False
        self.buffered = 0
        self._out: deque[bytes | memoryview] = deque()
        self._ending = False
        self._bodyless = False
        self._paused_handler = False  # we paused the handler: too much unsent
        self._trailers: HeaderList | None = None
        # The response head waits for the first pump, so a response without body goes out
        # as one HEADERS frame with END_STREAM (gRPC's trailers-only answers need that).
        self._head: HeaderList | None = None
        self._unacked = -1  # >= 0 while the handler has paused reading the body
        self.expected: int | None = None  # the request's content-length, if it gave one

    # pipeline.Side

    def dispatch(self, ctx: RequestContext, route: CompiledRoute) -> None:
        self.exchange = route.handler.start(ctx, self)

    def hold_body(self) -> None:
        self.pending = []

    def filters_done(
        self, ctx: RequestContext, route: CompiledRoute, answer: Response | None
    ) -> None:
        if self.conn.streams.get(self.stream_id) is not self:
            return
        pending, self.pending = self.pending, None
        pipeline.go_on(self, ctx, route, answer, pending, self.request_done)

    def internal_error(self, exc: Exception) -> None:
        if not self.started:
            self.ctx.error = f"internal error: {exc!r}"
            self.error(500, "internal error")
        else:
            self.abort(f"internal error: {exc!r}")

    # request body, from the connection

    def on_data(self, data: bytes, flow: int) -> None:
        if self.request_done:  # the rest of a body refused with 413: read and dropped
            self.conn.ack(self.stream_id, flow)
            return
        ctx = self.ctx
        ctx.bytes_received += len(data)
        expected = self.expected
        if expected is not None and ctx.bytes_received > expected:
            self.conn.ack(self.stream_id, flow)
            self.refuse("a request body longer than its content-length")
            return
        route = ctx.route
        if route is not None and ctx.bytes_received > route.max_body_size:
            # Acknowledged like any other DATA: the connection's window is shared.
            self.conn.ack(self.stream_id, flow)
            if self.exchange is not None:
                exchange, self.exchange = self.exchange, None
                exchange.on_downstream_lost()
            self._release()
            self.request_done = True
            self.error(413, "the request body is larger than allowed")
            return
        if self.exchange is not None:
            self.exchange.on_request_body(data)
        elif self.pending is not None:
            self.pending.append(data)
        if self._unacked >= 0:
            self._unacked += flow
        else:
            self.conn.ack(self.stream_id, flow)

    def on_end(self) -> None:
        if self.request_done:
            return
        expected = self.expected
        if expected is not None and self.ctx.bytes_received != expected:
            # RFC 9113 8.1.1: passed on, the declared length would make an HTTP/1.1 upstream
            # take bytes of the next request as this one's body.
            self.refuse("a request body shorter than its content-length")
            return
        self.request_done = True
        if self.exchange is not None:
            self.exchange.on_request_end()

    def on_reset(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.on_downstream_lost()
        self._release()
        if not self.started:
            self.ctx.status = 499
        self.ctx.error = self.ctx.error or "the client reset the stream"
        self.conn.stream_over(self)

    def refuse(self, reason: str) -> None:
        """A malformed request (RFC 9113 8.1.1): reset the stream with PROTOCOL_ERROR."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.on_downstream_lost()
        self._release()
        if not self.started:
            self.ctx.status = 400
        self.ctx.error = self.ctx.error or reason
        self._out.clear()
        self.conn.reset(self.stream_id, ErrorCodes.PROTOCOL_ERROR)
        self.conn.stream_over(self)

    def _release(self) -> None:
        """Acknowledge the body bytes held back while the handler was paused: nobody will
        resume reading them, and the connection's window is shared by every stream."""
        unacked, self._unacked = self._unacked, -1
        if unacked > 0:
            self.conn.ack(self.stream_id, unacked)

    # Downstream

    def send_interim(self, status: int, headers: HeaderList) -> None:
        pass  # 1xx responses are not relayed over HTTP/2 yet

    def start_response(self, status: int, headers: HeaderList, length: int | None) -> None:
        ctx = self.ctx
        ctx.status = status
        self.started = True
        self._bodyless = status in BODYLESS_STATUS or ctx.method == "HEAD"
        self._head = response_block(status, headers)

    def write(self, data: bytes | memoryview) -> None:
        if not data or self._bodyless:
            return
        self.ctx.bytes_sent += len(data)
        self._out.append(data)
        self.buffered += len(data)

    def flush(self) -> None:
        self.conn.pump(self)

    def set_send_buffer(self, size: int) -> None:
        pass  # the stream's flow-control window bounds what is held

    async def send_file(self, fd: int, offset: int, count: int) -> bool:
        return False  # DATA frames need the bytes in hand: the handler writes them

    def can_splice(self) -> bool:
        return False  # nor can they be spliced

    def splice_from(self, fd: int, count: int) -> int:
        return 0

    def finish(self) -> None:
        self._ending = True
        self.exchange = None
        self._release()
        self.conn.pump(self)

    def send_trailers(self, trailers: HeaderList) -> None:
        """End the response with a trailer section (gRPC's status) instead of END_STREAM on
        the last DATA frame."""
        self._trailers = [(k.lower(), v) for k, v in trailers]
        self.finish()

    def abort(self, reason: str) -> None:
        self.exchange = None
        self._release()
        self.ctx.error = self.ctx.error or reason
        self._out.clear()
        self.conn.reset(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        self.conn.stream_over(self)

    def respond(self, status: int, headers: HeaderList, body: bytes) -> None:
        if self.started:
            self.abort("a second response to one request")
        else:
            pipeline.respond_whole(self, self.chain(), self.ctx, status, headers, body)

    def error(self, status: int, message: str) -> None:
        if self.started:
            self.abort(message)
        else:
            self.respond(status, *pipeline.error_response(self.vhost, status, message))

    def pause_reading(self) -> None:
        if self._unacked < 0:
            self._unacked = 0

    def resume_reading(self) -> None:
        self._release()

    def start_tunnel(self, peer: Tunnel, status: int = 200, headers: Any = None) -> bytes:
        self.abort("tunnels are not served over HTTP/2")
        return b""

    def tunnel_write(self, data: bytes | memoryview) -> None:
        pass

    def tunnel_close(self) -> None:
        pass

    # helpers for the connection

    def chain(self) -> FilterChain:
        return pipeline.chain_for(self.ctx.route, self.vhost or self.conn.listener.hosts.default)

    def log(self) -> None:
        pipeline.log_request(self.ctx, self.vhost or self.conn.listener.hosts.default)
