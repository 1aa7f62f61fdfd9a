"""The tunnel's upstream side, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ferryman.config.forward import Dns
from ferryman.forward import outbound
from ferryman.forward.acl import AddressPolicy, IPAddress
from ferryman.forward.chain import ChainRouter
from ferryman.forward.outbound import Dialer, Outbound
from ferryman.forward.resolver import HostsTable, Resolver


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 2525) if name == "peername" else default

    def close(self) -> None:
        self.closed = True


def _dialer(allow: Sequence[str] = ("127.0.0.1",)) -> Dialer:
    hosts = HostsTable({"mail.example.test": ["127.0.0.1"]})
    return Dialer(Resolver(hosts, Dns()), AddressPolicy(allow), ChainRouter([]), 5.0)


def test_direct_tunnel_keeps_bytes_the_server_sent_first(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_connect(
        addrs: Sequence[IPAddress], port: int, factory: Callable[[], Outbound], delay: float
    ) -> tuple[asyncio.Transport, Outbound]:
        conn = factory()
        transport = FakeTransport()
        conn.connection_made(transport)
        # The server's banner arrives before the relay takes the connection over.
        view = conn.get_buffer(-1)
        banner = b"220 mail.example.test ESMTP\r\n"
        view[: len(banner)] = banner
        conn.buffer_updated(len(banner))
        return transport, conn

    monkeypatch.setattr(outbound, "happy_connect", fake_connect)

    async def main() -> tuple[bytes, str]:
        conn, leftover, peer = await _dialer().open_tunnel("mail.example.test", 25)
        assert conn.take_buffered() == b""
        return leftover, peer

    leftover, peer = asyncio.run(main())
    assert leftover == b"220 mail.example.test ESMTP\r\n"
    assert peer == "127.0.0.1:2525"


def test_rules_with_destinations_see_every_resolved_address() -> None:
    from ferryman.config.forward import ForwardRule
    from ferryman.forward.acl import AccessPolicy, Refused, Request

    access = AccessPolicy(
        [
            ForwardRule(action="deny", destinations=["127.0.0.2/32"], reason="not that one"),
            ForwardRule(action="allow"),
        ],
        default_allow=False,
        clients=[],
        connect_ports=[443],
    )
    hosts = HostsTable(
        {"two.example.test": ["127.0.0.2", "127.0.0.1"], "bad.example.test": ["127.0.0.2"]}
    )
    dialer = Dialer(
        Resolver(hosts, Dns()),
        AddressPolicy(["127.0.0.0/8"]),
        ChainRouter([]),
        5.0,
        access,
    )

    def req(host: str) -> Request:
        return Request(None, "", frozenset(), host, 443, "CONNECT")

    async def main() -> None:
        kept = await dialer.allowed_addresses("two.example.test", req("two.example.test"))
        assert [str(a) for a in kept] == ["127.0.0.1"]
        with pytest.raises(Refused, match="not that one"):
            await dialer.allowed_addresses("bad.example.test", req("bad.example.test"))
        for spelling in ("127.0.0.2", "::ffff:127.0.0.2"):  # literals are addresses too
            with pytest.raises(Refused, match="not that one"):
                await dialer.open_tunnel(spelling, 443, req(spelling))

    asyncio.run(main())


def test_idle_origin_connections_the_origin_closed_leave_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ferryman.upstream.connection import UpstreamConnection
    from ferryman.upstream.peer import Peer

    async def fake_connect(
        addrs: Sequence[IPAddress],
        port: int,
        factory: Callable[[], UpstreamConnection],
        delay: float,
    ) -> tuple[asyncio.Transport, UpstreamConnection]:
        conn = factory()
        transport = FakeTransport()
        conn.connection_made(transport)
        return transport, conn

    monkeypatch.setattr(outbound, "happy_connect", fake_connect)

    async def main() -> None:
        pool = outbound.DestinationPool(_dialer(), "mail.example.test", 80)
        peer = Peer("mail.example.test:80")
        conn = await pool.connect(peer)
        pool.release(conn)
        assert pool.idle_count == 1
        conn.connection_lost(None)  # the origin closed its idle connection
        assert pool.idle_count == 0 and pool.acquire_idle(peer) is None
        pool.close()

    asyncio.run(main())
