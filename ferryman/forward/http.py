"""The HTTP side of the forward proxy: absolute-form requests and CONNECT.

Theory of operation. The HTTP/1.1 connection calls :meth:`ForwardHttp.start` for a request
whose target is not origin-form. Checking it may wait (a bcrypt check in a thread, a DNS
lookup), so the request is carried by a :class:`PendingExchange` that keeps the body (and
pauses the client past 64 KiB) until the decision is made. Then:

- ``CONNECT host:port``: the client network, credentials, rules and connect ports are
  checked, the :class:`~ferryman.forward.outbound.Dialer` opens the connection (only to
  addresses the policy allows, or through a parent), and a
  :class:`~ferryman.proxy.tunnel.Splice` relays bytes with backpressure and idle timeout.
- ``GET http://host/...``: after the same checks the request goes to the reverse proxy's own
  :class:`~ferryman.proxy.forward.ProxyExchange` with a per-destination route whose pool
  dials through the forward proxy's resolver and policy: streaming, keep-alive to the
  origin and 502/504 come from the one implementation. Hop-by-hop headers (with
  ``Proxy-Authorization`` and ``Proxy-Connection``) are dropped there; ``Via`` is added here.

Refusals answer 407 (with ``Proxy-Authenticate``) or 403 with a short reason; every request
is logged by the listener's access log with the user, destination, bytes and duration.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from ferryman.config.base import parse_hostport
from ferryman.config.forward import Parent, target_host
from ferryman.config.schema import (
    ProxyHandler,
    Retry,
    Timeouts,
    Upstream,
    UpstreamServer,
    WebSocket,
)
from ferryman.context import RequestContext
from ferryman.filters.base import Filter, FilterChain
from ferryman.forward.acl import IPAddress, Refused, Request, parse_ip
from ferryman.forward.auth import parse_basic
from ferryman.forward.chain import authority, basic_credentials
from ferryman.forward.outbound import BulkSplice, DestinationPool
from ferryman.http.h1 import RequestHead
from ferryman.http.headers import HeaderList, get, set_
from ferryman.proxy.api import Downstream, Exchange
from ferryman.proxy.forward import ProxyExchange, ProxyRoute
from ferryman.server.tasks import spawn
from ferryman.upstream.group import UpstreamGroup

if TYPE_CHECKING:
    from ferryman.forward.service import ForwardProxy

log = logging.getLogger("ferryman.forward")

_HOLD_LIMIT = 65536
_ROUTES = 1024  # destinations whose pools are kept


class AuthRequired(Exception):
    pass


class PendingExchange:
    """The exchange of a forward request while it is being checked; afterwards it passes
    everything to the real one."""

    __slots__ = ("_body", "_downstream", "_ended", "_held", "_paused", "inner", "lost")

    def __init__(self, downstream: Downstream) -> None:
        self._downstream = downstream
        self.inner: Exchange | None = None
        self._body: list[bytes] = []
        self._held = 0
        self._ended = False
        self._paused = False
        self.lost = False

    def attach(self, inner: Exchange) -> None:
        self.inner = inner
        body, self._body = self._body, []
        for data in body:
            inner.on_request_body(data)
        if self._ended:
            inner.on_request_end()
        if self._paused:
            self._paused = False
            self._downstream.resume_reading()

    def on_request_body(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.on_request_body(data)
            return
        self._body.append(data)
        self._held += len(data)
        if self._held > _HOLD_LIMIT and not self._paused:
            self._paused = True
            self._downstream.pause_reading()

    def on_request_end(self) -> None:
        if self.inner is not None:
            self.inner.on_request_end()
        else:
            self._ended = True

    def on_downstream_pause(self) -> None:
        if self.inner is not None:
            self.inner.on_downstream_pause()

    def on_downstream_resume(self) -> None:
        if self.inner is not None:
            self.inner.on_downstream_resume()

    def on_downstream_lost(self) -> None:
        self.lost = True
        if self.inner is not None:
            self.inner.on_downstream_lost()


class ForwardHeaders(Filter):
    """Headers of one destination's requests: Host from the request's authority, Via, and
    the parent's credentials when it goes through one."""

    def __init__(self, host: bytes, via: bytes, parent_auth: bytes | None) -> None:
        super().__init__()
        self.host = host
        self.via = via
        self.parent_auth = parent_auth

    def on_upstream_request(self, ctx: RequestContext, headers: HeaderList) -> None:
        # RFC 9112 3.2.2: the authority in the target wins over a received Host.
        set_(headers, b"host", self.host)
        _add_via(headers, self.via)
        if self.parent_auth is not None:
            headers.append((b"proxy-authorization", self.parent_auth))

    def on_response(self, ctx: RequestContext, status: int, headers: HeaderList) -> None:
        _add_via(headers, self.via)


def _add_via(headers: HeaderList, via: bytes) -> None:
    old = get(headers, b"via")
    set_(headers, b"via", old + b", " + via if old else via)


def parse_absolute(target: bytes) -> tuple[str, int, bytes]:
    """``http://host[:port]/path?q`` into (host, port, origin-form target)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() != b"http":
        if scheme.lower() == b"https":
            raise Refused(400, "https:// URLs go through CONNECT")
        raise Refused(400, "the request target is not an http:// URL")
    end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    auth, path = rest[:end], rest[end:]
    auth = auth.rpartition(b"@")[2]  # user:password@ in a URL is not for us to send on
    host, port = parse_authority(auth, 80)
    if not path.startswith(b"/"):
        path = b"/" + path
    return host, port, path


def parse_authority(value: bytes, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` or ``[IPv6]:port`` (the port may be left out given ``default_port``)
    into (host as the rules see it, port), read by the config's own
    :func:`~ferryman.config.base.parse_hostport`; an IPv6 address needs its brackets."""
    text = value.decode("latin-1").strip()
    if not text or text.startswith((":", "[]")):
        # parse_hostport reads an empty host as 0.0.0.0, as a listen address means.
        raise Refused(400, "bad host in the request target")
    try:
        host, port = parse_hostport(text, default_port)
    except ValueError:
        if default_port is None and _parses(text, 1):
            raise Refused(400, "CONNECT needs host:port") from None
        raise Refused(400, "bad host or port in the request target") from None
    port_text = (text.rpartition("]")[2] if text.startswith("[") else text).partition(":")[2]
    if port_text and not port_text.isdigit():
        # int() also reads "+80", "8_0" and " 80", which a request target does not allow.
        raise Refused(400, "bad port in the request target")
    normal = target_host(host)
    if normal is None:
        raise Refused(400, "bad host in the request target")
    return normal, port


def _parses(text: str, default_port: int) -> bool:
    try:
        parse_hostport(text, default_port)
    except ValueError:
        return False
    return True


class ForwardHttp:
    """The object a listener's ``forward`` attribute holds."""

    def __init__(self, service: ForwardProxy) -> None:
        self.service = service
        self._routes: OrderedDict[tuple[str, int, int, frozenset[IPAddress] | None], ProxyRoute] = (
            OrderedDict()
        )
        # What every destination's route shares; only its upstream (the address) differs.
        t = service.config.timeouts
        self._handler = ProxyHandler(
            upstream="forward",
            timeouts=Timeouts(connect=t.connect, send=t.read, read=t.read),
            websocket=WebSocket(enabled=False),
            x_forwarded=False,
        )
        self._retry = Retry(tries=1)

    def start(self, ctx: RequestContext, downstream: Downstream, head: RequestHead) -> Exchange:
        pending = PendingExchange(downstream)
        ctx.scheme = "http"
        spawn(self._run(ctx, downstream, head, pending), "forward request")
        return pending

    async def _run(
        self,
        ctx: RequestContext,
        downstream: Downstream,
        head: RequestHead,
        pending: PendingExchange,
    ) -> None:
        try:
            await self._serve(ctx, downstream, head, pending)
        except AuthRequired:
            if not pending.lost:
                ctx.error = "proxy authentication required"
                service = self.service
                assert service.auth is not None
                downstream.respond(
                    407,
                    [
                        (b"proxy-authenticate", service.auth.challenge),
                        (b"content-type", b"text/plain; charset=utf-8"),
                    ],
                    b"proxy authentication required\n",
                )
        except Refused as e:
            if not pending.lost:
                ctx.error = e.reason
                log.info("refused %s %s from %s: %s", ctx.method, ctx.host, ctx.client_addr, e)
                downstream.error(e.status, e.reason)
        except Exception as e:
            log.exception("forward request failed")
            # Answer unless a handler already owns the response (an exchange or a tunnel).
            if not pending.lost and pending.inner is None and "splice" not in ctx.state:
                ctx.error = f"internal error: {e!r}"
                downstream.error(500, "internal error")

    async def _serve(
        self,
        ctx: RequestContext,
        downstream: Downstream,
        head: RequestHead,
        pending: PendingExchange,
    ) -> None:
        service = self.service
        client = parse_ip(ctx.client_addr)
        if not service.access.client_allowed(client):
            raise Refused(403, f"client {ctx.client_addr} may not use this proxy")
        connect = head.method == "CONNECT"
        if connect:
            host, port = parse_authority(head.target)
            path = b""
        else:
            host, port, path = parse_absolute(head.target)
        ctx.host = authority(host, port)
        user = ""
        auth = service.auth
        if auth is not None:
            creds = parse_basic(get(head.headers, b"proxy-authorization"))
            if creds is None or not await auth.verify(*creds):
                if creds is not None:
                    ctx.user = creds[0]
                    log.info("wrong proxy password for %r from %s", creds[0], ctx.client_addr)
                raise AuthRequired
            user = ctx.user = creds[0]
        groups = auth.groups(user) if auth is not None else frozenset()
        req = Request(client, user, groups, host, port, head.method)
        service.access.check(req, final=False)
        if connect:
            conn, leftover, peer = await service.dialer.open_tunnel(host, port, req)
            if pending.lost:
                conn.close()
                return
            ctx.upstream_addr = peer
            ctx.state["splice"] = BulkSplice(
                downstream, conn, leftover, service.config.timeouts.idle, 200, []
            )
            return
        parent = service.dialer.chain.pick(host)
        only: frozenset[IPAddress] | None = None
        if parent is None:
            # A refusal is a 403, not a 502. When rules look at addresses, the connections
            # of this request go only to the addresses they allowed for it.
            addrs = await service.dialer.allowed_addresses(host, req)
            if service.access.uses_destinations:
                only = frozenset(addrs)
        else:
            service.dialer.check_parent(req)
        route = self._route(host, port, parent, only)
        if parent is not None and parent.kind == "http":
            ctx.upstream_target = b"http://" + authority(host, port).encode("ascii") + path
        else:
            ctx.upstream_target = path
        if pending.lost:
            return
        if head.expect_continue:
            downstream.send_interim(100, [])  # checks passed: the client may send its body
        pending.attach(ProxyExchange(route, ctx, downstream))

    def close(self) -> None:
        for route in self._routes.values():
            route.group.pool.close()

    def _route(
        self, host: str, port: int, parent: Parent | None, only: frozenset[IPAddress] | None
    ) -> ProxyRoute:
        key = (host, port, id(parent), only)
        route = self._routes.get(key)
        if route is not None:
            self._routes.move_to_end(key)
            return route
        service = self.service
        address = authority(host, port)
        up = Upstream(servers=[UpstreamServer(address=address, max_fails=0)], retry=self._retry)
        group = UpstreamGroup(f"forward:{address}", up)
        group.pool = DestinationPool(service.dialer, host, port, only)
        parent_auth = None
        if parent is not None and parent.kind == "http" and parent.user:
            parent_auth = basic_credentials(parent.user, parent.password)
        # The one peer is the destination (a parent is dialed by the pool): its Host value.
        host_header = group.peers[0].host_header
        chain = FilterChain([ForwardHeaders(host_header, service.via, parent_auth)])
        route = ProxyRoute(self._handler, group, chain)
        self._routes[key] = route
        if len(self._routes) > _ROUTES:
            _, old = self._routes.popitem(last=False)
            old.group.pool.close()
        return route
