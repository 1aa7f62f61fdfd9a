"""The HTTP/1.1 client connection: parses requests, runs the route, writes responses.

Theory of operation. One :class:`H1Connection` per client socket. Requests are answered one
at a time and in order; a pipelined request that arrives while one is in flight waits in a
queue with reading paused. The response head and the body of a small response are gathered
in ``_out`` and leave in one ``write`` when the handler calls :meth:`flush` or
:meth:`finish`.

One timer per connection serves every client timeout: it holds a deadline that the hot
path moves by storing a float, and it reschedules itself when it fires early, so a request
costs no timer allocation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final, cast

from ferryman.context import RequestContext, Response
from ferryman.filters.base import FilterChain
from ferryman.http.h1 import (
    LAST_CHUNK,
    ParseError,
    RequestHead,
    RequestParser,
    chunk,
    response_head,
)
from ferryman.http.headers import BODYLESS_STATUS, HeaderList
from ferryman.proxy.api import Exchange, Tunnel
from ferryman.routing.table import CompiledRoute, VirtualHost
from ferryman.server import pipeline, splicing
from ferryman.server.deadline import Deadline
from ferryman.server.listener import Listener
from ferryman.server.sendfile import can_sendfile, sendfile

log = logging.getLogger("ferryman")

# Connection states. Final: the compiled build reads these as constants, not globals.
IDLE: Final = 0
HEAD: Final = 1
BUSY: Final = 2
TUNNEL: Final = 3
CLOSED: Final = 4
# Body bytes we read and drop to keep a connection after an early answer.
_DISCARD_LIMIT: Final = 1 << 20
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_GATHER_MIN: Final = 16384  # a body piece this large is written beside the head, not joined to it


class H1Connection(asyncio.Protocol):
    __slots__ = (
        "_body_expected",
        "_buffer_set",
        "_chunked",
        "_client_eof",
        "_deadline",
        "_deferred",
        "_discard",
        "_discarded",
        "_expect",
        "_gather",
        "_in_feed",
        "_out",
        "_pause_handler",
        "_pause_queue",
        "_pause_upgrade",
        "_pending",
        "_pipe",
        "_queue",
        "_request_done",
        "_sock",
        "_started",
        "_state",
        "_tunnel_buf",
        "client_addr",
        "client_port",
        "ctx",
        "exchange",
        "keep_alive",
        "listener",
        "parser",
        "requests",
        "tls",
        "transport",
        "tunnel",
        "vhost",
        "write_paused",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.parser = RequestParser(self, listener.parser_limits)
        self.ctx: RequestContext | None = None
        self.vhost: VirtualHost | None = None
        self.exchange: Exchange | None = None
        self.tunnel: Tunnel | None = None
        self.keep_alive = True
        self.requests = 0
        self.write_paused = False
        self.client_addr = ""
        self.client_port = 0
        self._state = IDLE
        self._out: list[bytes | memoryview] = []
        self._gather = False  # _out holds a large buffer: send with writev, not a join
        self._chunked = False
        self._started = False
        self._request_done = True
        self._discard = False
        self._discarded = 0
        self._expect = False
        # TLS facts shared by the connection's requests (None on plain listeners).
        self.tls: dict[str, str] | None = None
        self._queue: deque[list[Any]] | None = None
        self._pending: list[bytes] | None = None  # body read while async filters run
        self._pause_queue = False
        self._pause_handler = False
        self._pause_upgrade = False
        self._tunnel_buf: list[bytes] | None = None
        self._deadline = Deadline(self._timed_out)
        self._in_feed = False
        self._buffer_set = False
        self._body_expected = False
        self._deferred: CompiledRoute | None = None
        self._sock = -1  # the socket, when bodies can be spliced into it (plain TCP on Linux)
        self._pipe: splicing.Pipe | None = None  # a spliced body, sent at the loop turn's end
        self._client_eof = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        if len(listener.connections) >= listener.limits.max_connections:
            self.transport.abort()
            self._state = CLOSED
            return
        listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_addr, self.client_port = peer[0], peer[1]
        self._sock = splicing.socket_fd(transport)
        self._deadline.arm(listener.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self._tunnel_buf is not None:
            self._tunnel_buf.append(data)
            return
        fresh = self._state == IDLE
        if fresh:
            self._state = HEAD
        self._in_feed = True
        try:
            offset = self.parser.feed(data)
        except ParseError as e:
            self._in_feed = False
            self._reject(e.status, e.reason)
            return
        except Exception as e:
            self._in_feed = False
            log.exception("internal error while handling a request")
            self._internal_error(e)
            return
        self._in_feed = False
        if fresh and self._state == HEAD:
            # The head did not come whole in one read: from now on it has header_timeout.
            self._deadline.arm(self.listener.header_timeout)
        if offset is not None:
            # What follows an upgrade request belongs to the tunnel, if there is one: hold
            # it, and read no more until the upstream has answered.
            self._tunnel_buf = [data[offset:]] if offset < len(data) else []
            self._pause_upgrade = True
            self._update_reading()
        route = self._deferred
        if route is not None:
            self._deferred = None
            if self.ctx is not None:
                try:
                    self.filters_done(self.ctx, route, None)
                except Exception as e:
                    log.exception("internal error while handling a request")
                    self._internal_error(e)

    def eof_received(self) -> bool | None:
        self._unpipe()  # a finished answer still in its pipe goes before the close
        # A client half-closing after its request still gets the answer (and those of the
        # requests it pipelined before), then the close: it can send no other request. One
        # that stops in the middle of a request body has left: that request can never end.
        if self.ctx is not None and self.tunnel is None and self._request_done:
            self._client_eof = True
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        self._unpipe()  # drops what it holds
        self.listener.connections.discard(self)
        self._deadline.close()
        if self.tunnel is not None:
            self.tunnel.client_closed()
            self.tunnel = None
        exchange = self.exchange
        ctx = self.ctx
        if exchange is not None:
            self.exchange = None
            exchange.on_downstream_lost()
        if ctx is not None and self.vhost is not None:
            if not self._started:
                ctx.status = 499  # the client went away before the answer (nginx's 499)
            self._log(ctx)
            self.ctx = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._state == BUSY:
            # A client that takes no bytes for send_timeout is let go (nginx send_timeout).
            self._deadline.arm(self.listener.send_timeout)
        if self.exchange is not None:
            self.exchange.on_downstream_pause()
        elif self.tunnel is not None:
            self.tunnel.client_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._state == BUSY:
            if self._request_done or not self._body_expected:
                self._deadline.at = 0.0
            else:
                self._deadline.arm(self.listener.body_timeout)
        if self.exchange is not None:
            self.exchange.on_downstream_resume()
        elif self.tunnel is not None:
            self.tunnel.client_resume_writing()

    # RequestSink: called by the parser

    def on_request(self, head: RequestHead) -> None:
        if self.ctx is not None:
            # Pipelined: answer in order, so wait (reading paused) for the one in flight.
            if self._queue is None:
                self._queue = deque()
            self._queue.append([head, [], False])
            self._pause_queue = True
            self._update_reading()
            return
        self._state = BUSY
        self.requests += 1
        listener = self.listener
        self.keep_alive = head.keep_alive and (
            not listener.draining and self.requests < listener.keepalive_requests
        )
        self._started = False
        self._chunked = False
        self._request_done = False
        ctx = RequestContext(
            self.client_addr,
            self.client_port,
            listener.port,
            listener.scheme,
            head.method,
            head.target,
            head.version,
            head.headers,
            head.host.decode("latin-1"),
        )
        ctx.tls = self.tls
        self.ctx = ctx
        has_body = self._body_expected = head.has_body
        if has_body:
            self._deadline.arm(listener.body_timeout)
        else:
            self._deadline.at = 0.0
        if head.target[:1] != b"/":
            if listener.forward is not None:
                self.vhost = listener.hosts.default
                self.exchange = listener.forward.start(ctx, self, head)
                return
            if not self._origin_form(ctx, head):
                return
        if head.upgrade:
            if has_body:
                # llhttp stops at an upgrade request's head: its body would go unframed.
                self.keep_alive = False
                self.vhost = listener.hosts.lookup(head.host)
                self.error(400, "an upgrade request cannot carry a body")
                return
            upgrade = next((v for k, v in head.headers if k == b"upgrade"), b"")
            if upgrade.lower() == b"websocket" and head.method == "GET":
                ctx.state["upgrade"] = upgrade
        self._expect = head.expect_continue
        pipeline.start(self, listener.hosts, ctx, head.host, head.content_length)

    def on_body(self, data: bytes) -> None:
        if self._queue:
            self._queue[-1][1].append(data)
            return
        self._deliver_body(data)

    def on_request_end(self) -> None:
        if self._queue:
            self._queue[-1][2] = True
            return
        self._deliver_end()

    def _origin_form(self, ctx: RequestContext, head: RequestHead) -> bool:
        """An absolute-form target on a reverse-proxy listener: take the authority as Host."""
        target = head.target
        if head.method == "CONNECT":
            self.keep_alive = False
            self.vhost = self.listener.hosts.default
            self.error(405, "CONNECT is not served here")
            return False
        lower = target[:8].lower()
        if lower.startswith(b"http://") or lower.startswith(b"https://"):
            rest = target.split(b"://", 1)[1]
            authority, slash, path = rest.partition(b"/")
            head.host = authority
            # The target's authority wins over any Host header (RFC 9112 3.2.2): route and
            # forward the same name.
            headers = head.headers
            headers[:] = [h for h in headers if h[0] != b"host"]
            headers.insert(0, (b"host", authority))
            head.target = slash + path if slash else b"/"
            ctx.host = authority.decode("latin-1")
            ctx.target = ctx.upstream_target = head.target
            ctx.path, _, ctx.query = head.target.partition(b"?")
            return True
        self.vhost = self.listener.hosts.default
        self.error(400, "invalid request target")
        return False

    # pipeline.Side

    def hold_body(self) -> None:
        self._pending = []

    def filters_done(
        self, ctx: RequestContext, route: CompiledRoute, answer: Response | None
    ) -> None:
        if self.ctx is not ctx or self._state == CLOSED:
            return
        pending, self._pending = self._pending, None
        pipeline.go_on(self, ctx, route, answer, pending, self._request_done)

    def dispatch(self, ctx: RequestContext, route: CompiledRoute) -> None:
        if self._in_feed and self._body_expected:
            # Start the handler once this chunk is parsed: a framing error in the body bytes
            # it holds is then found before anything has gone upstream.
            self._deferred = route
            self._pending = []
            return
        if self._expect and not self._request_done and self.transport is not None:
            self._unpipe()
            self.transport.write(_CONTINUE)
        self.exchange = route.handler.start(ctx, self)

    def internal_error(self, exc: Exception) -> None:
        self._internal_error(exc)

    # request body

    def _deliver_body(self, data: bytes) -> None:
        self._deadline.extend(self.listener.body_timeout)
        if self._discard:
            self._discarded += len(data)
            if self._discarded > _DISCARD_LIMIT:
                self._close()
            return
        ctx = self.ctx
        if ctx is None:
            return
        ctx.bytes_received += len(data)
        route = ctx.route
        if route is not None and ctx.bytes_received > route.max_body_size:
            self.keep_alive = False
            if self.exchange is not None:
                exchange, self.exchange = self.exchange, None
                exchange.on_downstream_lost()
            self.error(413, "the request body is larger than allowed")
            return
        if self.exchange is not None:
            self.exchange.on_request_body(data)
        elif self._pending is not None:
            self._pending.append(data)

    def _deliver_end(self) -> None:
        self._request_done = True
        self._deadline.at = 0.0
        if self._discard:
            self._discard = False
            self._next()
        elif self.exchange is not None:
            self.exchange.on_request_end()

    # Downstream: called by handlers

    def send_interim(self, status: int, headers: HeaderList) -> None:
        ctx = self.ctx
        if ctx is not None and ctx.version == "1.1" and self.transport is not None:
            self._unpipe()
            self.transport.write(response_head(status, headers))

    def start_response(self, status: int, headers: HeaderList, length: int | None) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx.status = status
        self._started = True
        if length is None and status not in BODYLESS_STATUS and ctx.method != "HEAD":
            # An unknown length is framed here; a stale Content-Length beside it would make
            # the message ambiguous to whatever reads it next.
            headers[:] = [h for h in headers if h[0] != b"content-length"]
            if ctx.version == "1.1":
                self._chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                self.keep_alive = False  # the body ends where the connection does
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        elif ctx.version == "1.0":
            headers.append((b"connection", b"keep-alive"))
        self._out.append(response_head(status, headers))

    def write(self, data: bytes | memoryview) -> None:
        size = len(data)
        if not size:
            return
        ctx = self.ctx
        if ctx is None:
            return
        ctx.bytes_sent += size
        if ctx.method == "HEAD":
            return
        if size >= _GATHER_MIN:
            self._gather = True
        self._out.append(chunk(data) if self._chunked else data)

    def flush(self) -> None:
        out = self._out
        if out and self.transport is not None:
            self._send(out)

    def _send(self, out: list[bytes | memoryview]) -> None:
        """One write for what is queued: a join of small pieces, writev of large ones."""
        assert self.transport is not None
        self._unpipe()
        if len(out) == 1:
            self.transport.write(out[0])
        elif self._gather:
            self.transport.writelines(out)
        else:
            self.transport.write(b"".join(out))
        self._gather = False
        out.clear()

    def set_send_buffer(self, size: int) -> None:
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high=size)
            self._buffer_set = True

    async def send_file(self, fd: int, offset: int, count: int) -> bool:
        """Send ``count`` bytes of the open file ``fd`` from ``offset`` as body, by
        sendfile(2). False when this connection cannot (TLS): the caller writes them."""
        transport, ctx = self.transport, self.ctx
        if (
            transport is None
            or ctx is None
            or self.listener.scheme != "http"
            or not can_sendfile(transport)
        ):
            return False
        ctx.bytes_sent += count
        if ctx.method == "HEAD" or count == 0:
            return True
        if self._chunked:
            self._out.append(b"%x\r\n" % count)
        self.flush()
        self._unpipe()
        await sendfile(transport, fd, offset, count)
        if self._chunked:
            self._out.append(b"\r\n")
        return True

    def can_splice(self) -> bool:
        return self._sock >= 0

    def splice_from(self, fd: int, count: int) -> int:
        ctx, transport = self.ctx, self.transport
        if (
            ctx is None
            or transport is None
            or self._chunked
            or ctx.method == "HEAD"
            or self._state == CLOSED
        ):
            return 0
        self._unpipe()  # a second fill in one turn: the first goes out before it
        # Closing, its number may be another socket's already; and bytes the transport holds
        # must leave first.
        if transport.is_closing() or transport.get_write_buffer_size():
            return 0
        pipe = splicing.take_pipe()
        if pipe is None:
            return 0
        try:
            taken = splicing.fill(pipe, self._out, fd, count)
        except OSError as e:  # ``first`` stays queued: it goes out the usual way
            log.warning("splicing a body failed: %s", e)
            pipe.close()
            return 0
        if not self._out:
            self._gather = False
        self._pipe = pipe
        splicing.later(self._deadline.loop, self._unpipe)
        ctx.bytes_sent += taken
        return taken

    def _unpipe(self) -> None:
        """Send what this connection's pipe holds: before anything written after it, or at
        the end of the loop's turn."""
        pipe = self._pipe
        if pipe is None:
            return
        self._pipe = None
        transport = self.transport
        if transport is None or self._state == CLOSED or transport.is_closing():
            splicing.discard(pipe)  # the client is gone
            return
        try:
            rest = splicing.drain(pipe, self._sock)
        except OSError as e:
            # What the pipe held is lost: the client must not take the next answer for it.
            log.warning("sending a spliced body failed: %s", e)
            pipe.close()
            transport.abort()
            return
        if rest:
            transport.write(rest)

    def finish(self) -> None:
        out = self._out
        if self._chunked:
            out.append(LAST_CHUNK)
        if out and self.transport is not None:
            self._send(out)
        self._response_done()

    def abort(self, reason: str) -> None:
        self.flush()
        self.keep_alive = False
        ctx = self.ctx
        self.exchange = None
        if ctx is not None:
            ctx.error = ctx.error or reason
            self._log(ctx)
            self.ctx = None
        self._close()

    def respond(self, status: int, headers: HeaderList, body: bytes) -> None:
        ctx = self.ctx
        assert ctx is not None
        if self._started:
            self.abort("a second response to one request")
        else:
            pipeline.respond_whole(self, self._chain(), ctx, status, headers, body)

    def error(self, status: int, message: str) -> None:
        if self._started:
            self.abort(message)
        else:
            self.respond(status, *pipeline.error_response(self.vhost, status, message))

    def pause_reading(self) -> None:
        self._pause_handler = True
        self._update_reading()

    def resume_reading(self) -> None:
        self._pause_handler = False
        self._update_reading()

    def start_tunnel(self, peer: Tunnel, status: int, headers: HeaderList) -> bytes:
        """Answer ``status`` (101 or 200), then relay raw bytes to and from ``peer``."""
        ctx = self.ctx
        assert ctx is not None and self.transport is not None
        ctx.status = status
        self._started = True
        self._unpipe()
        self.transport.write(response_head(status, headers))
        self._state = TUNNEL
        self._deadline.at = 0.0
        self.exchange = None
        self.tunnel = peer
        buffered = b"".join(self._tunnel_buf or [])
        self._tunnel_buf = None
        self._pause_handler = self._pause_queue = self._pause_upgrade = False
        self._update_reading()
        return buffered

    def tunnel_write(self, data: bytes | memoryview) -> None:
        if self.transport is not None:
            if self.ctx is not None:
                self.ctx.bytes_sent += len(data)
            self.transport.write(data)

    def tunnel_close(self) -> None:
        self.tunnel = None
        ctx = self.ctx
        if ctx is not None:
            self._log(ctx)
            self.ctx = None
        self._close()

    # ending a request

    def _chain(self) -> FilterChain:
        route = self.ctx.route if self.ctx is not None else None
        return pipeline.chain_for(route, self.vhost or self.listener.hosts.default)

    def _log(self, ctx: RequestContext) -> None:
        pipeline.log_request(ctx, self.vhost or self.listener.hosts.default)

    def _response_done(self) -> None:
        """The response is out: log it, then on to the next request, or close."""
        if self._buffer_set and self.transport is not None:
            self._buffer_set = False
            self.transport.set_write_buffer_limits()  # back to the default for the next one
        ctx = self.ctx
        self.exchange = None
        if ctx is not None:
            self._log(ctx)
        self.ctx = None
        if not self.keep_alive or self._state == CLOSED:
            self._close()
            return
        if self._pause_handler:  # a handler that paused the body may have ended early
            self._pause_handler = False
            self._update_reading()
        if self._tunnel_buf is not None:
            # The parser stopped at an upgrade we did not take; what follows is unparsed.
            leftover = b"".join(self._tunnel_buf)
            self._tunnel_buf = None
            self._pause_upgrade = False
            self._update_reading()
            self.parser = RequestParser(self, self.listener.parser_limits)
            self._request_done = True
            self._next()
            if leftover:
                self.data_received(leftover)
            return
        if not self._request_done:
            self._discarded = ctx.bytes_received if ctx is not None else 0
            if self._discarded > _DISCARD_LIMIT:
                self._close()
                return
            self._discard = True  # read the rest of the body, then go on
            return
        self._next()

    def _next(self) -> None:
        queue = self._queue
        if queue:
            head, body, ended = queue.popleft()
            if not queue:
                self._pause_queue = False
                self._update_reading()
            self.on_request(head)
            for data in body:
                self._deliver_body(data)
            if ended:
                self._deliver_end()
            return
        self._state = IDLE
        self._deadline.arm(self.listener.keepalive_timeout)
        if self.listener.draining or self._client_eof:
            self._close()

    def _reject(self, status: int, reason: str) -> None:
        """Malformed input: answer with ``status`` and close; nothing reaches an upstream."""
        self.keep_alive = False
        self._deferred = None
        self._tunnel_buf = []  # stop parsing whatever follows
        if self.ctx is not None:
            if self.exchange is not None:
                exchange, self.exchange = self.exchange, None
                exchange.on_downstream_lost()
            if self._started:
                self.abort(reason)
                return
        else:
            self.ctx = RequestContext(
                self.client_addr,
                self.client_port,
                self.listener.port,
                self.listener.scheme,
                "-",
                b"-",
                "1.1",
                [],
                "",
            )
        self.ctx.error = reason
        self.vhost = self.listener.hosts.default
        self.error(status, reason)

    def _internal_error(self, exc: Exception) -> None:
        if self.ctx is not None and not self._started:
            self.keep_alive = False
            self.ctx.error = f"internal error: {exc!r}"
            self.error(500, "internal error")
        else:
            self._close()

    def _close(self) -> None:
        self._unpipe()
        self._state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self._state == CLOSED:
            return
        if self._pause_queue or self._pause_handler or self._pause_upgrade:
            t.pause_reading()
        else:
            t.resume_reading()

    # client timeouts

    def _timed_out(self) -> None:
        if self._state == CLOSED:
            return
        if self._state == IDLE:
            self._close()
        elif self._state == HEAD:
            self._reject(408, "the request head was not received in time")
        elif self._state == BUSY and not self._started:
            self._reject(408, "the request body was not received in time")
        elif self._state == BUSY and self.write_paused:
            exchange, self.exchange = self.exchange, None
            if exchange is not None:
                exchange.on_downstream_lost()
            self.abort(f"the client took no bytes for {self.listener.send_timeout:g}s")
        else:
            self._close()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the response in flight."""
        self.keep_alive = False
        if self._state == IDLE:
            self._close()
