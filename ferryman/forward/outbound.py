"""Opening connections for the forward proxy: resolve, apply the address policy, connect
(directly with happy eyeballs, or through a parent proxy), and the tunnel's upstream side.

Every failure comes out as :class:`~ferryman.forward.acl.Refused` with the HTTP status and
SOCKS reply code that describe it, so the HTTP and SOCKS entry points share one mapping.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import cast

from ferryman.config.forward import Parent
from ferryman.forward.acl import (
    SOCKS_CONNECTION_REFUSED,
    SOCKS_HOST_UNREACHABLE,
    SOCKS_NETWORK_UNREACHABLE,
    AccessPolicy,
    AddressPolicy,
    IPAddress,
    Refused,
    Request,
    denied,
)
from ferryman.forward.chain import ChainRouter, http_connect, socks5_connect
from ferryman.forward.resolver import ResolveError, Resolver, happy_connect
from ferryman.http.headers import HeaderList
from ferryman.proxy.api import Downstream
from ferryman.proxy.tunnel import Splice
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.peer import Peer
from ferryman.upstream.pool import Pool


class BulkSplice(Splice):
    """A :class:`Splice` that can take a view of the upstream side's read buffer."""

    __slots__ = ("_client_transport",)

    def __init__(
        self,
        downstream: Downstream,
        upstream: Outbound,
        leftover: bytes,
        idle_timeout: float,
        status: int = 200,
        headers: HeaderList | None = None,
    ) -> None:
        transport = getattr(downstream, "transport", None)
        self._client_transport: asyncio.WriteTransport | None = transport
        tune_for_bulk(transport)
        tune_for_bulk(upstream.transport)
        upstream.bulk = self
        super().__init__(downstream, upstream, leftover, idle_timeout, status, headers)

    def from_upstream_view(self, data: memoryview) -> bool:
        """Relay ``data``; True when the client's transport kept it to send later."""
        self.from_upstream(data)
        t = self._client_transport
        return t is None or t.get_write_buffer_size() > 0


class Outbound(asyncio.BufferedProtocol):
    """The upstream side of a tunnel. Before a :class:`Splice` takes it, received bytes are
    kept for a handshake (a parent's CONNECT answer, a SOCKS5 reply).

    Downloads are the bulk of tunnel traffic, so this side reads into its own buffer
    (``BufferedProtocol``) and hands the client a view of it, saving the copy into a new
    ``bytes`` per read. When the client's transport wrote the view out at once, the same
    bytes are read into again; when it queued the view, the next read goes after it in the
    buffer (a bump allocator), so what stays pinned is about what is queued, and a new
    buffer is started when less than ``_MIN_READ`` is left."""

    __slots__ = ("_buf", "_closed", "_off", "_rbuf", "_waiter", "bulk", "transport", "tunnel")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.tunnel: Splice | None = None
        self.bulk: BulkSplice | None = None  # the same object as ``tunnel``, typed for views
        self._buf = bytearray()
        self._rbuf: memoryview | None = None
        self._off = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        buf = self._rbuf
        if buf is None or len(buf) - self._off < _MIN_READ:
            buf = self._rbuf = memoryview(bytearray(_READ_SIZE))
            self._off = 0
        return buf[self._off :]

    def buffer_updated(self, nbytes: int) -> None:
        buf = self._rbuf
        assert buf is not None
        start = self._off
        data = buf[start : start + nbytes]
        if self.bulk is not None:
            if self.bulk.from_upstream_view(data):
                self._off = start + nbytes  # queued by the client's transport: keep it
            return
        self._buf += data
        self._wake()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self.tunnel is not None:
            self.tunnel.upstream_closed()
        self._wake()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_resume_writing()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # the handshake side (chain.Stream)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def read_some(self) -> bytes:
        while not self._buf:
            if self._closed:
                raise ConnectionResetError("the connection closed during the handshake")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def take_buffered(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def local_address(self) -> tuple[str, int]:
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        return (sock[0], sock[1]) if sock else ("0.0.0.0", 0)


# A tunnel moves bulk data: with asyncio's default 64 KiB high-water mark the relay stops and
# starts its reader every few hundred microseconds. Deeper buffers let each side run longer.
_HIGH_WATER = int(os.environ.get("FERRYMAN_TUNNEL_HIGH", 256 * 1024))
_READ_SIZE = 256 * 1024
_MIN_READ = 64 * 1024
_LOW_WATER = _HIGH_WATER // 4


def tune_for_bulk(transport: asyncio.BaseTransport | None) -> None:
    if isinstance(transport, asyncio.WriteTransport) or hasattr(
        transport, "set_write_buffer_limits"
    ):
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)  # type: ignore[union-attr]


def _refusal(exc: BaseException, what: str) -> Refused:
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, TimeoutError):
        return Refused(504, f"connect to {what} timed out", SOCKS_HOST_UNREACHABLE)
    if isinstance(exc, ResolveError):
        return Refused(502, str(exc), SOCKS_HOST_UNREACHABLE)
    if isinstance(exc, ConnectionRefusedError):
        return Refused(502, f"{what} refused the connection", SOCKS_CONNECTION_REFUSED)
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EAFNOSUPPORT):
        return Refused(502, f"network unreachable for {what}", SOCKS_NETWORK_UNREACHABLE)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return Refused(502, f"connect to {what} failed: {reason}", SOCKS_HOST_UNREACHABLE)


class Dialer:
    def __init__(
        self,
        resolver: Resolver,
        policy: AddressPolicy,
        chain: ChainRouter,
        connect_timeout: float,
        access: AccessPolicy | None = None,
    ) -> None:
        self.resolver = resolver
        self.policy = policy
        self.chain = chain
        self.connect_timeout = connect_timeout
        self.access = access

    async def allowed_addresses(self, host: str, req: Request | None = None) -> list[IPAddress]:
        """``host``'s addresses that the policy allows (and, given the request, that the
        rules allow it to connect to); :class:`Refused` when none is."""
        try:
            addrs = await self.resolver.resolve(host)
        except ResolveError as e:
            raise _refusal(e, host) from None
        kept, why = self.policy.filter(addrs)
        if not kept:
            raise denied(f"destination {host}: {why}")
        if req is not None and self.access is not None and self.access.uses_destinations:
            allowed: list[IPAddress] = []
            refusal: Refused | None = None
            for addr in kept:
                try:
                    self.access.check(req.at(addr))
                except Refused as e:
                    refusal = refusal or e
                else:
                    allowed.append(addr)
            if not allowed:
                assert refusal is not None
                raise refusal
            kept = allowed
        return kept

    def check_parent(self, req: Request | None) -> None:
        """The rules for a request a parent proxy resolves: no address is known here."""
        if req is not None and self.access is not None and self.access.uses_destinations:
            self.access.check(req, final=True)

    async def open_tunnel(
        self, host: str, port: int, req: Request | None = None
    ) -> tuple[Outbound, bytes, str]:
        """A connection to ``host:port`` ready to splice, the bytes that already came back
        through it, and what it is connected to (for the log). ``req`` is checked again on
        each address when rules look at addresses (``destinations``)."""
        parent = self.chain.pick(host)
        what = f"{host}:{port}"
        conn: Outbound | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if parent is None:
                    addrs = await self.allowed_addresses(host, req)
                    _, conn = await happy_connect(
                        addrs, port, Outbound, self.resolver.happy_eyeballs_delay
                    )
                    peer = conn.transport.get_extra_info("peername") if conn.transport else None
                    # A server that speaks first (a banner) may already have sent bytes.
                    where = f"{peer[0]}:{peer[1]}" if peer else what
                    return conn, conn.take_buffered(), where
                self.check_parent(req)
                conn = await self._to_parent(parent)
                if parent.kind == "http":
                    rest = await http_connect(conn, host, port, parent)
                else:
                    rest = await socks5_connect(conn, host, port, parent)
                return conn, rest + conn.take_buffered(), f"{parent} -> {what}"
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, Exception):
                raise _refusal(e, what if parent is None else str(parent)) from None
            raise

    async def _to_parent(self, parent: Parent) -> Outbound:
        # The parent is the operator's choice: no address policy applies to it.
        addrs = await self.resolver.resolve(parent.host)
        _, conn = await happy_connect(
            addrs, parent.port, Outbound, self.resolver.happy_eyeballs_delay
        )
        return conn

    async def open_http(
        self, host: str, port: int, peer: Peer, only: frozenset[IPAddress] | None = None
    ) -> UpstreamConnection:
        """A connection for plain HTTP requests to ``host:port`` (or to the HTTP parent that
        serves it), as the pools lend them; ``only`` limits the addresses connected to."""
        parent = self.chain.pick(host)
        delay = self.resolver.happy_eyeballs_delay
        if parent is None:
            addrs = await self.allowed_addresses(host)
            if only is not None:
                addrs = [a for a in addrs if a in only]
                if not addrs:
                    raise denied(f"destination {host}: its addresses changed")
            _, conn = await happy_connect(addrs, port, lambda: UpstreamConnection(peer), delay)
            return conn
        if parent.kind == "http":
            addrs = await self.resolver.resolve(parent.host)
            _, conn = await happy_connect(
                addrs, parent.port, lambda: UpstreamConnection(peer), delay
            )
            return conn
        outbound = await self._to_parent(parent)
        try:
            await socks5_connect(outbound, host, port, parent)
        except BaseException:
            outbound.close()
            raise
        transport = outbound.transport
        assert transport is not None
        conn = UpstreamConnection(peer)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        return conn


class DestinationPool(Pool):
    """The keep-alive pool of one destination (``host:port``) for plain HTTP requests."""

    def __init__(
        self,
        dialer: Dialer,
        host: str,
        port: int,
        only: frozenset[IPAddress] | None = None,
    ) -> None:
        super().__init__(max_idle=8, idle_timeout=30.0, max_requests=1000)
        self.dialer = dialer
        self.host = host
        self.port = port
        self.only = only

    async def connect(self, peer: Peer) -> UpstreamConnection:
        try:
            conn = await self.dialer.open_http(self.host, self.port, peer, self.only)
        except Refused as e:
            # The exchange maps OSError to 502; a refusal found this late (the name now
            # resolves elsewhere, a parent said no) is a failed connect to it.
            raise OSError(e.reason) from None
        conn.on_idle_close = self._idle_closed  # as Pool.connect: an origin's close frees it
        self.active += 1
        return conn
