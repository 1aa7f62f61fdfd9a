"""The SOCKS5 listener's connections: the asyncio side of :mod:`ferryman.forward.socks5`.

One :class:`SocksConnection` per client socket. It feeds bytes to the sans-IO
:class:`~ferryman.forward.socks5.ServerMachine`, acts on its events (check credentials,
check the rules, dial), writes what the machine says, and once the reply is sent hands the
socket to a :class:`~ferryman.proxy.tunnel.Splice`, for which it plays the client side
(``start_tunnel`` / ``tunnel_write`` / ``tunnel_close``). A client that has not finished
its handshake within ``timeouts.handshake`` is dropped. Each connection is logged once, like
a CONNECT through the HTTP side.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from ferryman.context import RequestContext
from ferryman.forward import socks5
from ferryman.forward.acl import SOCKS_GENERAL_FAILURE, Refused, Request, parse_ip
from ferryman.forward.chain import authority
from ferryman.forward.outbound import BulkSplice
from ferryman.http.headers import HeaderList
from ferryman.proxy.api import Downstream
from ferryman.proxy.tunnel import Splice
from ferryman.server.tasks import spawn

if TYPE_CHECKING:
    from ferryman.forward.service import ForwardProxy

log = logging.getLogger("ferryman.forward")


class SocksConnection(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_logged",
        "_machine",
        "_paused",
        "_timer",
        "ctx",
        "server_port",
        "service",
        "transport",
        "tunnel",
    )

    def __init__(self, service: ForwardProxy, server_port: int) -> None:
        self.service = service
        self.server_port = server_port
        self.transport: asyncio.Transport | None = None
        self.tunnel: Splice | None = None
        self.ctx: RequestContext | None = None
        self._machine = socks5.ServerMachine(auth_required=service.auth is not None)
        self._closed = False
        self._logged = False
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False  # reading stopped while the machine waits for an answer

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if len(self.service.socks_connections) >= self.service.max_connections:
            self._closed = True
            self.transport.abort()
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        self.service.socks_connections.add(self)
        self.ctx = RequestContext(
            peer[0], peer[1], self.server_port, "socks5", "CONNECT", b"", "5", [], ""
        )
        if not self.service.access.client_allowed(parse_ip(peer[0])):
            self._fail(403, f"client {peer[0]} may not use this proxy")
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            self.service.config.timeouts.handshake, self._handshake_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        self._handle(self._machine.feed(data))

    def _sync_reading(self) -> None:
        """Stop reading while a check or a connect is in progress (what arrives then is
        kept by the machine, up to a limit); read again when the machine wants bytes."""
        t = self.transport
        if t is None or self._closed:
            return
        if self._machine.waiting and not self._paused:
            self._paused = True
            t.pause_reading()
        elif not self._machine.waiting and self._paused and self.tunnel is None:
            self._paused = False
            t.resume_reading()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.service.socks_connections.discard(self)
        self._cancel_timer()
        if self.tunnel is not None:
            self.tunnel.client_closed()
            return
        if self.ctx is not None and self.ctx.host and not self._logged:
            self.ctx.status = self.ctx.status or 499  # left before the answer
            self._log()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_pause_writing()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.client_resume_writing()

    # the handshake

    def _handle(self, events: list[socks5.Event]) -> None:
        for event in events:
            if isinstance(event, socks5.Send):
                self._write(event.data)
            elif isinstance(event, socks5.Credentials):
                spawn(self._check_credentials(event), "socks5 auth")
            elif isinstance(event, socks5.Connect):
                spawn(self._connect(event), "socks5 connect")
            elif isinstance(event, socks5.Failure):
                self._write(event.data)
                self._fail(400, f"SOCKS protocol: {event.reason}")
        self._sync_reading()

    async def _check_credentials(self, event: socks5.Credentials) -> None:
        auth = self.service.auth
        assert auth is not None and self.ctx is not None
        ok = await auth.verify(event.user, event.password)
        if self._closed:
            return
        self.ctx.user = event.user
        self._write(self._machine.auth_reply(ok))
        if not ok:
            log.info("wrong SOCKS5 password for %r from %s", event.user, self.ctx.client_addr)
            self._fail(407, "SOCKS5 authentication failed")
            return
        self._handle(self._machine.feed(b""))  # a request sent along with the credentials

    async def _connect(self, event: socks5.Connect) -> None:
        ctx = self.ctx
        assert ctx is not None
        service = self.service
        host = event.host.lower().rstrip(".")
        ctx.host = authority(host, event.port)
        ctx.target = ctx.host.encode("utf-8", "replace")
        ctx.scheme = "socks5" if event.version == 5 else "socks4"
        if event.version == 4 and self._machine.user:
            ctx.user = ctx.user or self._machine.user
        user = ctx.user if service.auth is not None else ""
        groups = service.auth.groups(user) if service.auth is not None else frozenset()
        try:
            # A SOCKS connect is a tunnel: connect_ports applies as to CONNECT.
            req = Request(parse_ip(ctx.client_addr), user, groups, host, event.port, "SOCKS")
            service.access.check(req, final=False)
            conn, leftover, peer = await service.dialer.open_tunnel(host, event.port, req)
        except Refused as e:
            if not self._closed:
                self._write(self._machine.reply(e.socks_code))
                self._fail(e.status, e.reason)
            return
        except Exception as e:  # a bug must not leave the client waiting
            log.exception("SOCKS connect failed")
            if not self._closed:
                self._write(self._machine.reply(SOCKS_GENERAL_FAILURE))
                self._fail(500, f"internal error: {e!r}")
            return
        if self._closed:
            conn.close()
            return
        self._cancel_timer()
        ctx.upstream_addr = peer
        ctx.status = 200
        bind_host, bind_port = conn.local_address
        self._write(self._machine.reply(socks5.SUCCEEDED, bind_host, bind_port))
        # Splice uses only the tunnel half of Downstream, which this class implements.
        client = cast("Downstream", self)
        ctx.state["splice"] = BulkSplice(client, conn, leftover, service.config.timeouts.idle, 200)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.tunnel is None and not self._closed:
            self._fail(408, "SOCKS handshake not finished in time")

    # what Splice calls (the Downstream side of a tunnel)

    def start_tunnel(
        self, peer: Splice, status: int = 200, headers: HeaderList | None = None
    ) -> bytes:
        self.tunnel = peer
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return self._machine.leftover

    def tunnel_write(self, data: bytes | memoryview) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def tunnel_close(self) -> None:
        self.tunnel = None
        self._log()
        self._close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    # ending

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)

    def _fail(self, status: int, reason: str) -> None:
        ctx = self.ctx
        if ctx is not None:
            ctx.status = status
            ctx.error = reason
            if status != 400 or ctx.host:
                log.info("SOCKS %s from %s: %s", ctx.host or "-", ctx.client_addr, reason)
            self._log()
        self._close()

    def _log(self) -> None:
        if self._logged or self.ctx is None:
            return
        self._logged = True
        if self.service.log is not None:
            self.service.log.on_log(self.ctx)

    def _close(self) -> None:
        self._closed = True  # nothing more is written or answered, even before the loss
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drain(self) -> None:
        """Graceful shutdown: close a connection still in its handshake; tunnels go on."""
        if self.tunnel is None:
            self._close()
