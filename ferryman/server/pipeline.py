"""The start of every request, whatever protocol it came in on: route, checks, filters, handler.

HTTP/1.1 connections and HTTP/2 streams call :func:`start` once the request head is known,
with a :class:`RequestContext` already built. What differs between protocols (``100
Continue``, keeping a connection, where the body waits while async filters run) stays on the
:class:`Side` that called; what a request means to Ferryman is decided here, once.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

from ferryman.context import RequestContext, Response
from ferryman.filters.base import FilterChain
from ferryman.http.conditional import date_now
from ferryman.http.errors import error_body
from ferryman.http.headers import HeaderList
from ferryman.proxy.api import Exchange
from ferryman.routing.table import CompiledRoute, HostTable, VirtualHost
from ferryman.server.tasks import spawn

log = logging.getLogger("ferryman")

# The gateway's "no route" answer; with ``error_format: html`` the usual HTML error instead.
_NOT_FOUND: Final = b'{"error": "Route not found"}'


class Side(Protocol):
    """The client side of one request: an HTTP/1.1 connection or an HTTP/2 stream."""

    vhost: VirtualHost | None
    keep_alive: bool
    exchange: Exchange | None

    def respond(self, status: int, headers: HeaderList, body: bytes) -> None: ...
    def error(self, status: int, message: str) -> None: ...
    def dispatch(self, ctx: RequestContext, route: CompiledRoute) -> None:
        """Hand the request to the route's handler."""

    def hold_body(self) -> None:
        """Keep body bytes that arrive while async filters run, for :meth:`filters_done`."""

    def filters_done(
        self, ctx: RequestContext, route: CompiledRoute, answer: Response | None
    ) -> None:
        """Async request filters finished: answer, or dispatch and deliver the held body."""

    def internal_error(self, exc: Exception) -> None: ...


def start(
    side: Side,
    hosts: HostTable,
    ctx: RequestContext,
    host: bytes,
    content_length: int | None,
) -> None:
    vhost = side.vhost = hosts.lookup(host)
    route = vhost.match(ctx.path)
    ctx.route = route
    if route is None:
        if vhost.error_format == "json":
            side.respond(404, [(b"content-type", b"application/json")], _NOT_FOUND)
        else:
            side.error(404, "Route not found")
        return
    if route.methods is not None and ctx.method not in route.methods:
        side.respond(405, [(b"allow", ", ".join(sorted(route.methods)).encode())], b"")
        return
    if content_length is not None and content_length > route.max_body_size:
        side.keep_alive = False
        side.error(413, "the request body is larger than allowed")
        return
    rewrite = route.rewrite
    if rewrite is not None:
        path = rewrite(ctx.path)
        ctx.upstream_target = path + b"?" + ctx.query if ctx.query else path
    chain = route.chain
    if chain.on_request:
        if chain.on_request_async:
            side.hold_body()
            spawn(_filter_async(side, ctx, route, chain), "request filters")
            return
        answer = chain.run_request_sync(ctx)
        if answer is not None:
            side.respond(answer.status, answer.headers, answer.body)
            return
    side.dispatch(ctx, route)


async def _filter_async(
    side: Side, ctx: RequestContext, route: CompiledRoute, chain: FilterChain
) -> None:
    try:
        answer = await chain.run_request_async(ctx)
    except Exception as e:
        log.exception("request filter failed")
        side.internal_error(e)
        return
    side.filters_done(ctx, route, answer)


def go_on(
    side: Side,
    ctx: RequestContext,
    route: CompiledRoute,
    answer: Response | None,
    held: list[bytes] | None,
    body_done: bool,
) -> None:
    """Request filters have finished: send their answer, or start the handler and give it the
    body that arrived meanwhile."""
    if answer is not None:
        side.respond(answer.status, answer.headers, answer.body)
        return
    side.dispatch(ctx, route)
    for data in held or ():
        if side.exchange is None:
            return
        side.exchange.on_request_body(data)
    if body_done and side.exchange is not None:
        side.exchange.on_request_end()


def chain_for(route: CompiledRoute | None, vhost: VirtualHost) -> FilterChain:
    """The filters a response goes through: its route's, or its server's when none matched."""
    return route.chain if route is not None else vhost.chain


def log_request(ctx: RequestContext, vhost: VirtualHost) -> None:
    """The ``on_log`` phase, unless the route keeps out of the access log."""
    route = ctx.route
    if route is None:
        vhost.chain.run_log(ctx)
    elif route.access_log:
        route.chain.run_log(ctx)


class Responder(Protocol):
    def start_response(self, status: int, headers: HeaderList, length: int | None) -> None: ...
    def write(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> None: ...


def respond_whole(
    side: Responder,
    chain: FilterChain,
    ctx: RequestContext,
    status: int,
    headers: HeaderList,
    body: bytes,
) -> None:
    """A whole response, through both response phases: a compressing filter sees it too."""
    body = chain.run_whole_response(ctx, status, headers, body)
    # Ferryman is the origin of this answer: RFC 9110 6.6.1 asks it to say when.
    headers.append((b"date", date_now()))
    side.start_response(status, headers, len(body))
    side.write(body)
    side.finish()


def error_response(
    vhost: VirtualHost | None, status: int, message: str
) -> tuple[HeaderList, bytes]:
    """Headers and body of one of Ferryman's own errors, in the server's error format."""
    ctype, body = error_body(status, message, vhost.error_format if vhost is not None else "json")
    return [(b"content-type", ctype)], body
