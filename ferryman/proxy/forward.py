"""The ``proxy`` handler: forwards one request to an upstream group and streams the answer.

Theory of operation. A :class:`ProxyExchange` lives for one client request. It asks the group
for a peer, borrows an idle connection from the pool or opens one, writes the request head
and the body as it arrives, and relays the response to the :class:`Downstream` as the
upstream parser produces it. Backpressure is explicit both ways: a client that reads slowly
pauses the upstream socket, an upstream that reads slowly pauses the client socket.

Failures before any response byte reached the client are retried on the next peer when the
group's policy allows and the request can be replayed: its body is kept only up to
:data:`REPLAY_LIMIT`, and a non-idempotent request that was already sent is never replayed
unless ``retry.non_idempotent`` says so. Once the response has started, a failure aborts the
client connection, so a truncated body is never passed off as whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Final

from ferryman.config.schema import ProxyHandler
from ferryman.context import RequestContext
from ferryman.filters.base import BodyFilter, FilterChain
from ferryman.http.h1 import LAST_CHUNK, ResponseHead, chunk, request_head
from ferryman.http.headers import (
    BODYLESS_STATUS,
    HOP_BY_HOP,
    HeaderList,
    get,
    strip_hop_by_hop,
)
from ferryman.proxy.api import Downstream, Exchange
from ferryman.proxy.tunnel import Splice
from ferryman.server.tasks import spawn
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.group import IDEMPOTENT, UpstreamGroup
from ferryman.upstream.peer import Peer

log = logging.getLogger("ferryman.proxy")

REPLAY_LIMIT: Final = 256 * 1024


class ProxyRoute:
    """The handler object of a ``proxy`` route, built once at config load."""

    def __init__(self, config: ProxyHandler, group: UpstreamGroup, chain: FilterChain) -> None:
        self.group = group
        self.chain = chain
        self.connect_timeout = config.timeouts.connect
        self.send_timeout = config.timeouts.send
        self.read_timeout = config.timeouts.read
        self.buffer = config.buffer
        self.websocket = config.websocket.enabled
        self.ws_idle_timeout = config.websocket.idle_timeout
        self.host_mode = config.host
        self.fixed_host = (
            None if config.host in ("pass", "upstream") else config.host.encode("latin-1")
        )

        # ``start`` is the exchange's constructor bound to this route: no call in between.
        self.start: Callable[[RequestContext, Downstream], Exchange | None] = partial(
            ProxyExchange, self
        )


class ProxyExchange:
    __slots__ = (
        "_body_done",
        "_body_filters",
        "_body_size",
        "_chunked_body",
        "_conn",
        "_counted",
        "_deadline",
        "_declared",
        "_downstream",
        "_eof_ends",
        "_finished",
        "_head",
        "_headers",
        "_paused_client",
        "_peer",
        "_replay",
        "_route",
        "_send_timer",
        "_sent_all",
        "_sent_try",
        "_started",
        "_switch",
        "_tried",
        "_unsent",
        "_upgrade",
        "ctx",
    )

    def __init__(self, route: ProxyRoute, ctx: RequestContext, downstream: Downstream) -> None:
        self._route = route
        self.ctx = ctx
        self._downstream = downstream
        self._conn: UpstreamConnection | None = None
        self._counted = False
        self._sent_try = False
        self._switch: HeaderList = []
        self._peer: Peer | None = None
        self._tried: list[Peer] = []
        self._replay: list[bytes] | None = []  # body already sent, kept for a retry
        self._unsent: list[bytes] = []  # body not yet written to the current connection
        self._body_size = 0
        self._body_done = False
        self._sent_all = False
        self._started = False  # response head passed to the client
        self._finished = False
        self._eof_ends = False
        self._paused_client = False
        self._send_timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        group = route.group
        if group.retry_timeout:
            self._deadline = time.monotonic() + group.retry_timeout

        self._upgrade = ctx.state.get("upgrade") if route.websocket else None
        self._chunked_body = False
        self._declared = -1  # the request's Content-Length, when it has one
        for name, value in ctx.headers:
            if name == b"transfer-encoding":
                self._chunked_body = True
            elif name == b"content-length":
                self._declared = int(value) if value.isdigit() else -2  # -2 never matches
        self._headers: HeaderList | None = None
        self._head = b""
        self._body_filters: tuple[BodyFilter, ...] = ()
        self._try_next()

    # choosing and connecting

    def _try_next(self) -> None:
        route = self._route
        group = route.group
        peer = group.pick(self._tried, group.key(self.ctx) if group.hashed else b"")
        if peer is None:
            self._fail(502, "no live upstream server", "no live upstreams")
            return
        self._tried.append(peer)
        self._peer = peer
        peer.active += 1
        self._counted = True
        self._sent_try = False
        self.ctx.upstream_addr = peer.address
        if self._headers is None:
            self._build_request()
        conn = group.pool.acquire_idle(peer)
        if conn is not None:
            self._attach(conn)
        else:
            spawn(self._connect(peer), f"connect {peer.address}")

    def _build_request(self) -> None:
        """The upstream request's headers, once the first peer is known (filters may log it)."""
        route = self._route
        ctx = self.ctx
        headers = strip_hop_by_hop(ctx.headers, _UPSTREAM_DROP)
        if self._upgrade is not None:
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", self._upgrade))
        if self._chunked_body:
            headers.append((b"transfer-encoding", b"chunked"))
        if route.fixed_host is not None:
            _set_host(headers, route.fixed_host)
        for method in route.chain.on_upstream_request:
            method(ctx, headers)
        self._headers = headers
        if route.host_mode != "upstream":
            self._head = request_head(ctx.method, ctx.upstream_target, headers)

    async def _connect(self, peer: Peer) -> None:
        try:
            async with asyncio.timeout(self._route.connect_timeout):
                conn = await self._route.group.pool.connect(peer)
        except TimeoutError:
            self._upstream_failed("timeout", f"connect to {peer.address} timed out")
            return
        except OSError as e:
            self._upstream_failed("error", f"connect to {peer.address} failed: {e.strerror or e}")
            return
        if self._finished or self._peer is not peer:
            self._route.group.pool.release(conn)  # the client left while we connected
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self._conn = conn
        self._sent_try = True
        ctx = self.ctx
        # A response body may skip Python when no filter can want to see it: the route's
        # body filters (if any) all leave a body with a Content-Length alone (whether one
        # takes this response is known with its head: splice_body checks).
        splice = self._route.chain.body_length_aware and self._downstream.can_splice()
        conn.attach(self, ctx.method, splice)
        head = self._head
        if not head:
            assert self._peer is not None and self._headers is not None
            headers = list(self._headers)
            _set_host(headers, self._peer.host_header)
            head = request_head(ctx.method, ctx.upstream_target, headers)
        pending = self._unsent
        if pending:
            frame = _frame_chunked if self._chunked_body else _frame_raw
            conn.write(head + b"".join(frame(c) for c in pending))
        else:
            conn.write(head)
        if self._replay is not None:
            self._replay.extend(pending)
        self._unsent = []
        if self._body_done:
            self._request_sent()
        if self._paused_client:
            self._paused_client = False
            self._downstream.resume_reading()

    def _request_sent(self) -> None:
        assert self._conn is not None
        if self._chunked_body:
            self._conn.write(LAST_CHUNK)
        self._sent_all = True
        self._conn.expect_data(self._route.read_timeout)

    # request body from the client

    def on_request_body(self, data: bytes) -> None:
        self._body_size += len(data)
        conn = self._conn
        if conn is not None:
            conn.write(_frame_chunked(data) if self._chunked_body else data)
            if self._replay is not None:
                self._replay.append(data)
        else:
            self._unsent.append(data)
            if not self._paused_client and sum(map(len, self._unsent)) > 65536:
                self._paused_client = True
                self._downstream.pause_reading()
        if self._replay is not None and self._body_size > REPLAY_LIMIT:
            self._replay = None

    def on_request_end(self) -> None:
        self._body_done = True
        if self._conn is not None and not self._sent_all:
            self._request_sent()

    # response from the upstream

    def on_response(self, head: ResponseHead) -> None:
        status = head.status
        if status < 200:
            if status == 101:
                self._switch = strip_hop_by_hop(head.headers)
                self._switch += [
                    (b"connection", b"upgrade"),
                    (b"upgrade", get(head.headers, b"upgrade") or b"websocket"),
                ]
            elif status != 100:
                self._downstream.send_interim(status, strip_hop_by_hop(head.headers))
            return
        route = self._route
        if status in route.group.retry_statuses and self._can_retry(sent=True):
            self._upstream_failed(f"http_{status}", f"upstream answered {status}")
            return
        peer = self._peer
        assert peer is not None
        if peer.fails:
            peer.succeeded()
        ctx = self.ctx
        ctx.upstream_status = status
        headers = strip_hop_by_hop(head.headers, HOP_BY_HOP, head.connection)
        chain = route.chain
        for on_response in chain.on_response:
            on_response(ctx, status, headers)
        length = head.content_length
        bodyless = status in BODYLESS_STATUS or ctx.method == "HEAD"
        self._eof_ends = not bodyless and length is None and not head.chunked
        if not bodyless and chain.on_response_body:
            self._body_filters = chain.body_filters(headers)
            if self._body_filters:
                length = None  # streamed through filters that may change the length
        self._started = True
        if route.buffer:
            self._downstream.set_send_buffer(route.buffer)
        self._downstream.start_response(status, headers, length)

    def on_response_body(self, data: bytes | memoryview) -> None:
        if not self._started:
            return  # the body of a response we are not relaying (a retried 502)
        if self._body_filters:  # filters are given bytes
            data = FilterChain.run_body(self._body_filters, self.ctx, bytes(data), False)
        self._downstream.write(data)

    def splice_body(self, fd: int, count: int) -> int:
        if not self._started or self._body_filters:
            return 0
        return self._downstream.splice_from(fd, count)

    def on_response_end(self, keep_alive: bool) -> None:
        if not self._started:
            return  # a retried response's end; that connection is already closed
        # Reused only if the upstream got exactly the body its request announced: anything
        # else would leave it reading our next request as the rest of this one.
        whole = self._declared == -1 or self._declared == self._body_size
        self._end_try(reuse=keep_alive and self._sent_all and whole)
        self._complete()

    def flush(self) -> None:
        self._downstream.flush()

    def _complete(self) -> None:
        self._finished = True
        if self._conn is not None or self._send_timer is not None:
            self._cancel_timer()
        if self._body_filters:
            self._downstream.write(FilterChain.finish_body(self._body_filters, self.ctx))
        self._downstream.finish()

    def on_upstream_upgrade(self, leftover: bytes) -> None:
        conn = self._conn
        if self._upgrade is None or conn is None or conn.transport is None:
            self.on_upstream_lost("upstream switched protocols unasked")
            return
        self._cancel_timer()
        self._finished = True
        self._conn = None
        self._route.group.pool.forget(conn)
        self._end_try(reuse=False)
        self.ctx.status = self.ctx.upstream_status = 101
        Splice(self._downstream, conn, leftover, self._route.ws_idle_timeout, 101, self._switch)

    def on_upstream_lost(self, reason: str, clean: bool = False) -> None:
        if self._finished:
            return
        self._end_try(reuse=False)
        if not self._started:
            self._upstream_failed("error", reason)
        elif self._eof_ends and clean:
            self._complete()  # the body was delimited by the connection's orderly end
        else:
            self._finished = True
            self._cancel_timer()
            self.ctx.error = f"upstream {self.ctx.upstream_addr}: {reason}"
            log.warning("%s %s: %s", self.ctx.method, self.ctx.target.decode("latin-1"), reason)
            self._downstream.abort(reason)

    def on_upstream_pause_writing(self) -> None:
        if not self._paused_client:
            self._paused_client = True
            self._downstream.pause_reading()
        # The upstream stopped taking the request: it has send_timeout to take more.
        if self._send_timer is None:
            loop = asyncio.get_running_loop()
            self._send_timer = loop.call_later(self._route.send_timeout, self._send_timed_out)

    def on_upstream_resume_writing(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._paused_client:
            self._paused_client = False
            self._downstream.resume_reading()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self._finished:
            return
        reason = f"{self.ctx.upstream_addr} took no request bytes for {self._route.send_timeout:g}s"
        if self._started:
            self._eof_ends = False
            self.on_upstream_lost(reason)
        else:
            self._upstream_failed("timeout", reason)

    # the client side

    def on_downstream_pause(self) -> None:
        if self._conn is not None:
            self._conn.pause()

    def on_downstream_resume(self) -> None:
        if self._conn is not None:
            self._conn.resume()

    def on_downstream_lost(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_timer()
        self._end_try(reuse=False)

    # failures, retries and timeouts

    def _end_try(self, reuse: bool) -> None:
        """The current try is over: give back or close its connection, uncount the peer."""
        conn = self._conn
        self._conn = None
        pool = self._route.group.pool
        if conn is not None:
            if reuse:
                pool.release(conn)
            else:
                pool.discard(conn)
        peer = self._peer
        if peer is not None and self._counted:
            peer.active -= 1
            self._counted = False

    def _can_retry(self, sent: bool) -> bool:
        group = self._route.group
        if len(self._tried) >= min(group.retry.tries, len(group.peers)):
            return False
        if self._deadline and time.monotonic() >= self._deadline:
            return False
        if sent and self._replay is None:
            return False  # part of the body is gone: it cannot be sent again
        return not (sent and self.ctx.method not in IDEMPOTENT and not group.retry.non_idempotent)

    def _upstream_failed(self, kind: str, reason: str) -> None:
        """The current try failed before the response started: retry or answer 502/504."""
        if self._finished:
            return
        self._cancel_timer()
        sent = self._conn is not None or self._sent_try
        self._end_try(reuse=False)
        if self._peer is not None:
            self._peer.failed(time.monotonic())
        group = self._route.group
        allowed = (
            (kind == "error" and group.retry_on_error)
            or (kind == "timeout" and group.retry_on_timeout)
            or kind.startswith("http_")
        )
        log.warning("upstream %s: %s", self.ctx.upstream_addr, reason)
        if allowed and self._can_retry(sent):
            if self._replay:
                self._unsent = self._replay + self._unsent
                self._replay = []
            self._sent_all = False
            self._try_next()
        elif kind == "timeout":
            self._fail(504, "the upstream server timed out", reason)
        else:
            self._fail(
                502, "the upstream server is unreachable or sent an invalid response", reason
            )

    def _fail(self, status: int, message: str, reason: str) -> None:
        self._finished = True
        self.ctx.error = reason
        self._downstream.error(status, message)

    def _cancel_timer(self) -> None:
        if self._conn is not None:
            self._conn.expect_data(0.0)
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def on_upstream_timeout(self) -> None:
        timeout = self._route.read_timeout
        reason = f"no answer from {self.ctx.upstream_addr} within {timeout:g}s"
        if self._started:
            self._eof_ends = False
            self.on_upstream_lost(reason)
        else:
            self._upstream_failed("timeout", reason)


def _frame_raw(data: bytes) -> bytes:
    return data


def _frame_chunked(data: bytes) -> bytes:
    return chunk(data) if data else b""


# Expect is answered by Ferryman itself (100 Continue), so it does not travel further.
_UPSTREAM_DROP: Final = HOP_BY_HOP | {b"expect"}


def _set_host(headers: HeaderList, host: bytes) -> None:
    for i, (k, _) in enumerate(headers):
        if k == b"host":
            headers[i] = (b"host", host)
            return
    headers.insert(0, (b"host", host))
