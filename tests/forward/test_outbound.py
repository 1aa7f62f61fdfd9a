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
