"""The ``proxy`` handler for groups that speak HTTP/2 (``protocol: h2c`` or ``h2``).

Used for gRPC, whose status travels in trailers that HTTP/1.1 upstream pools cannot carry.
The request goes up as one stream of the peer's multiplexed connection; the response head,
body and trailers come back to the client stream as they arrive. A client on HTTP/2 gets the
trailers; one on HTTP/1.1 gets the body without them (gRPC needs HTTP/2 end to end anyway).

Failures before the response started become 502/504 (no retry: a gRPC call is not known to
be idempotent); after it started, the client stream is reset.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ferryman.config.schema import ProxyHandler
from ferryman.context import RequestContext
from ferryman.filters.base import BodyFilter, FilterChain
from ferryman.http.headers import BODYLESS_STATUS, HOP_BY_HOP, HeaderList, strip_hop_by_hop
from ferryman.proxy.api import Downstream, Exchange
from ferryman.server.h2stream import H2Stream
from ferryman.server.tasks import spawn
from ferryman.upstream.group import UpstreamGroup
from ferryman.upstream.h2conn import H2Pool, UpstreamH2
from ferryman.upstream.peer import Peer

log = logging.getLogger("ferryman.proxy")

_DROP = HOP_BY_HOP | {b"host", b"expect"}


class H2ProxyRoute:
    """The handler object of a ``proxy`` route whose group speaks HTTP/2."""

    def __init__(self, config: ProxyHandler, group: UpstreamGroup, chain: FilterChain) -> None:
        self.config = config
        self.group = group
        self.chain = chain
        self.connect_timeout = config.timeouts.connect
        self.read_timeout = config.timeouts.read
        self.fixed_host = (
            None if config.host in ("pass", "upstream") else config.host.encode("latin-1")
        )
        self.host_mode = config.host
        # The group's: every route to it shares one connection per server.
        assert group.h2pool is not None, f"upstream {group.name} does not speak HTTP/2"
        self.pool: H2Pool = group.h2pool

    def start(self, ctx: RequestContext, downstream: Downstream) -> Exchange | None:
        return H2ProxyExchange(self, ctx, downstream)


class H2ProxyExchange:
    __slots__ = (
        "_body_filters",
        "_conn",
        "_counted",
        "_done",
        "_downstream",
        "_held",
        "_paused",
        "_peer",
        "_route",
        "_sid",
        "_started",
        "_timer",
        "_trailers",
        "_unsent",
        "_unsent_end",
        "ctx",
    )

    def __init__(self, route: H2ProxyRoute, ctx: RequestContext, downstream: Downstream) -> None:
        self._route = route
        self.ctx = ctx
        self._downstream = downstream
        self._conn: UpstreamH2 | None = None
        self._sid = 0
        self._started = False
        self._done = False
        self._paused = False
        # Response bytes not acknowledged while the client side is paused; -1: not paused.
        self._held = -1
        self._unsent = b""
        self._unsent_end = False
        self._trailers: HeaderList | None = None
        self._body_filters: tuple[BodyFilter, ...] = ()
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        group = route.group
        peer = group.pick([], group.key(ctx))
        if peer is None:
            self._fail(502, "no live upstream server", "no live upstreams")
            return
        self._peer: Peer = peer
        peer.active += 1  # in flight, for least_conn and two random choices
        self._counted = True
        ctx.upstream_addr = peer.address
        conn = route.pool.ready(peer)
        if conn is not None:
            self._open(conn)
        else:
            spawn(self._connect(peer), f"connect h2 {peer.address}")

    async def _connect(self, peer: Peer) -> None:
        try:
            async with asyncio.timeout(self._route.connect_timeout):
                conn = await self._route.pool.connect(peer)
        except TimeoutError:
            peer.failed(time.monotonic())
            self._fail(504, "the upstream server timed out", f"connect to {peer.address} timed out")
            return
        except OSError as e:
            peer.failed(time.monotonic())
            reason = f"connect to {peer.address} failed: {e.strerror or e}"
            self._fail(502, "the upstream server is unreachable", reason)
            return
        if not self._done:
            self._open(conn)

    def _open(self, conn: UpstreamH2) -> None:
        ctx = self.ctx
        route = self._route
        headers = _request_headers(ctx.headers)
        for method in route.chain.on_upstream_request:
            method(ctx, headers)
        authority = route.fixed_host
        if authority is None:
            if route.host_mode == "upstream":
                authority = self._peer.host_header
            else:
                authority = ctx.host.encode("latin-1")
        block: HeaderList = [
            (b":method", ctx.method.encode("ascii")),
            (b":scheme", b"https" if self._peer.tls else b"http"),
            (b":authority", authority),
            (b":path", ctx.upstream_target),
        ]
        block += [(k, v) for k, v in headers if k != b"host"]
        self._conn = conn
        self._sid = conn.open_stream(self, block, end=False)
        self._send_pending()

    # request body from the client

    def on_request_body(self, data: bytes) -> None:
        self._unsent += data
        self._send_pending()

    def on_request_end(self) -> None:
        self._unsent_end = True
        self._send_pending()

    def _send_pending(self) -> None:
        conn = self._conn
        if conn is None or self._done or not self._sid:
            return
        if self._unsent or self._unsent_end:
            sent = conn.send(self._sid, self._unsent, self._unsent_end)
            self._unsent = self._unsent[sent:]
            if not self._unsent and self._unsent_end:
                self._unsent_end = False
                self._arm_timer()
        if len(self._unsent) > (1 << 20) and not self._paused:
            self._paused = True
            self._downstream.pause_reading()
        elif self._paused and len(self._unsent) < (256 << 10):
            self._paused = False
            self._downstream.resume_reading()

    # StreamOwner: the upstream's answer

    def on_h2_window(self) -> None:
        self._send_pending()

    def on_h2_response(self, status: int, headers: HeaderList, ended: bool) -> None:
        if self._done:
            return
        self._touch()
        self._peer.succeeded()
        ctx = self.ctx
        ctx.upstream_status = status
        self._route.chain.run_response(ctx, status, headers)
        if not ended:
            self._body_filters = self._route.chain.body_filters(headers)
        length = None if self._body_filters else _content_length(headers)
        if ended and length and ctx.method != "HEAD" and status not in BODYLESS_STATUS:
            # A declared length with no body to follow: the client must not wait for it.
            headers[:] = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", b"0"))
            length = 0
        self._started = True
        # The upstream's length, when the body goes out as it came: an HTTP/1.1 client then
        # gets Content-Length, not chunks (with a stale Content-Length beside them).
        self._downstream.start_response(status, headers, length)
        if not ended:
            self._downstream.flush()  # a trailers-only answer leaves as one HEADERS frame

    def on_h2_data(self, data: bytes, flow: int) -> None:
        if self._done:
            return
        self._touch()
        for method in self._body_filters:
            data = method(self.ctx, data, False)
        self._downstream.write(data)
        self._downstream.flush()
        if self._held >= 0:
            self._held += flow
        elif self._conn is not None:
            self._conn.ack(self._sid, flow)

    def on_h2_trailers(self, trailers: HeaderList) -> None:
        self._trailers = trailers

    def on_h2_end(self) -> None:
        if self._done:
            return
        self._end()
        self._cancel_timer()
        self._release_held()
        downstream = self._downstream
        if not self._started:
            self._fail(502, "the upstream server sent no response", "upstream ended early")
            return
        if self._body_filters:
            data = FilterChain.finish_body(self._body_filters, self.ctx)
            if data:
                downstream.write(data)
        if self._trailers and isinstance(downstream, H2Stream):
            downstream.send_trailers(self._trailers)
        else:
            downstream.finish()

    def on_h2_lost(self, reason: str) -> None:
        if self._done:
            return
        self._end()
        self._cancel_timer()
        self._peer.failed(time.monotonic())
        if not self._started:
            self._fail(502, "the upstream server is unreachable or failed", reason)
        else:
            self.ctx.error = f"upstream {self.ctx.upstream_addr}: {reason}"
            self._downstream.abort(reason)

    # the client side

    def on_downstream_pause(self) -> None:
        self._held = max(self._held, 0)

    def on_downstream_resume(self) -> None:
        self._release_held()

    def on_downstream_lost(self) -> None:
        if self._done:
            return
        self._end()
        self._cancel_timer()
        if self._conn is not None and self._sid:
            self._release_held()  # before the reset: the connection's window is shared
            self._conn.cancel(self._sid)

    def _release_held(self) -> None:
        """Acknowledge the response bytes held back while the client side was paused."""
        held, self._held = self._held, -1
        if held > 0 and self._conn is not None:
            self._conn.ack(self._sid, held)

    # failures and the read timeout

    def _end(self) -> None:
        """The exchange is over, however it ended: the peer has one request fewer in flight."""
        if not self._done:
            self._done = True
            if self._counted:
                self._peer.active -= 1

    def _fail(self, status: int, message: str, reason: str) -> None:
        self._end()
        self._cancel_timer()
        self.ctx.error = reason
        log.warning("upstream %s: %s", self.ctx.upstream_addr or "-", reason)
        self._downstream.error(status, message)

    def _arm_timer(self) -> None:
        if self._timer is None and not self._done:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._route.read_timeout, self._on_timer)

    def _touch(self) -> None:
        self._cancel_timer()
        self._arm_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._done:
            return
        reason = f"no answer from {self.ctx.upstream_addr} within {self._route.read_timeout:g}s"
        if self._conn is not None and self._sid:
            self._release_held()
            self._conn.cancel(self._sid)
        if self._started:
            self._end()
            self.ctx.error = reason
            self._downstream.abort(reason)
        else:
            self._fail(504, "the upstream server timed out", reason)


def _content_length(headers: HeaderList) -> int | None:
    """The response's content-length when it gives exactly one valid value, else None."""
    found = [v for k, v in headers if k.lower() == b"content-length"]
    if len(found) != 1:
        return None
    value = found[0].strip()
    return int(value) if value.isdigit() and len(value) <= 18 else None


def _request_headers(headers: HeaderList) -> HeaderList:
    out = strip_hop_by_hop(headers, _DROP)
    # HTTP/2 allows ``te: trailers`` only; gRPC servers insist on it.
    if any(k == b"te" and b"trailers" in v.lower() for k, v in headers):
        out.append((b"te", b"trailers"))
    return out
