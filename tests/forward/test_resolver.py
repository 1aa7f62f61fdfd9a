"""The hosts table, the DNS cache and happy-eyeballs connects over loopback sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from ferryman.config.forward import Dns
from ferryman.forward.resolver import (
    HostsTable,
    ResolveError,
    Resolver,
    happy_connect,
    interleave,
)

ip = ipaddress.ip_address


def test_hosts_table() -> None:
    table = HostsTable(
        {
            "*.example.test": ["127.0.0.1"],
            "*.deep.example.test": ["::1"],
            "api.example.test": ["127.0.0.3", "::1"],
        }
    )
    assert table.lookup("API.example.test.") == [ip("127.0.0.3"), ip("::1")]
    assert table.lookup("x.example.test") == [ip("127.0.0.1")]
    assert table.lookup("a.deep.example.test") == [ip("::1")]
    assert table.lookup("example.test") is None
    assert table.lookup("other.test") is None


def test_interleave_families() -> None:
    addrs = [ip("::1"), ip("::2"), ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")]
    assert interleave(addrs) == [
        ip(a) for a in ("::1", "127.0.0.1", "::2", "127.0.0.2", "127.0.0.3")
    ]


def test_resolver_literals_hosts_cache_and_failures() -> None:
    async def run() -> None:
        r = Resolver(HostsTable({"*.example.test": ["127.0.0.1"]}), Dns(cache_ttl=60))
        assert await r.resolve("127.0.0.2") == [ip("127.0.0.2")]
        assert await r.resolve("[::1]") == [ip("::1")]
        assert await r.resolve("a.example.test") == [ip("127.0.0.1")]
        assert ip("127.0.0.1") in await r.resolve("localhost")  # the system resolver
        assert "localhost" in r._cache
        with pytest.raises(ResolveError):
            await r.resolve("no-such-name.invalid")
        with pytest.raises(ResolveError, match="cached failure"):
            await r.resolve("no-such-name.invalid")

    asyncio.run(run())


def test_happy_connect_skips_a_dead_address_and_closes_losers() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    async def run() -> None:
        # 127.0.0.2 has nothing on the port: refused at once, so the next starts at once.
        loop = asyncio.get_running_loop()
        t = loop.time()
        transport, _ = await happy_connect(
            [ip("127.0.0.2"), ip("127.0.0.1")], port, asyncio.Protocol, delay=5.0
        )
        assert transport.get_extra_info("peername")[0] == "127.0.0.1"
        assert loop.time() - t < 2.0
        transport.close()
        with pytest.raises(ConnectionRefusedError):
            await happy_connect([ip("127.0.0.2")], port, asyncio.Protocol, delay=0.1)

    try:
        asyncio.run(run())
    finally:
        listener.close()


def test_shared_lookup_survives_the_first_caller_being_cancelled() -> None:
    async def run() -> None:
        r = Resolver(HostsTable({}), Dns())
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow_query(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
            started.set()
            await release.wait()
            return [ip("127.0.0.1")]

        r._query = slow_query  # type: ignore[method-assign]
        first = asyncio.ensure_future(r.resolve("slow.test"))
        await started.wait()
        second = asyncio.ensure_future(r.resolve("slow.test"))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(ResolveError, match="abandoned"):
            await asyncio.wait_for(second, 2)
        # The next lookup starts afresh.
        release.set()
        assert await r.resolve("slow.test") == [ip("127.0.0.1")]

    asyncio.run(run())
