"""Names to addresses for the forward proxy, and connecting to the addresses allowed.

- A static hosts table from the config answers first (``api.example.test`` or
  ``*.example.test``), as ``/etc/hosts`` would, so tests and split-horizon setups need no DNS.
- Other names go to the system resolver (``getaddrinfo``), whose answers are cached for
  ``dns.cache_ttl`` (it does not report record TTLs) and failures for ``dns.negative_ttl``;
  concurrent lookups of one name share one query.
- :func:`happy_connect` is RFC 8305 over a list of addresses already filtered by the address
  policy. ``loop.create_connection(host, happy_eyeballs_delay=...)`` would resolve the name
  again itself, and could then connect to an address the policy never saw (DNS rebinding);
  racing the literal addresses we checked closes that gap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from ferryman.config.forward import Dns, ascii_name
from ferryman.forward.acl import IPAddress, parse_ip

P = TypeVar("P", bound=asyncio.BaseProtocol)


class ResolveError(OSError):
    pass


class HostsTable:
    def __init__(self, entries: Mapping[str, Sequence[str]]) -> None:
        self.exact: dict[str, list[IPAddress]] = {}
        wildcards: list[tuple[str, list[IPAddress]]] = []
        for name, addrs in entries.items():
            ips = [ipaddress.ip_address(a) for a in addrs]
            if name.startswith("*."):
                wildcards.append((name[1:].lower(), ips))
            else:
                self.exact[name.lower().rstrip(".")] = ips
        # Longest suffix first: ``*.a.example.test`` beats ``*.example.test``.
        self.wildcards = sorted(wildcards, key=lambda w: -len(w[0]))

    def lookup(self, host: str) -> list[IPAddress] | None:
        host = ascii_name(host) or host.lower().rstrip(".")
        found = self.exact.get(host)
        if found is not None:
            return found
        for suffix, ips in self.wildcards:
            if host.endswith(suffix):
                return ips
        return None


class Resolver:
    def __init__(self, hosts: HostsTable, config: Dns) -> None:
        self.hosts = hosts
        self.ttl = config.cache_ttl
        self.negative_ttl = config.negative_ttl
        self.max_entries = config.max_entries
        self.happy_eyeballs_delay = config.happy_eyeballs_delay
        # name -> (expires, addresses or None for a failure)
        self._cache: OrderedDict[str, tuple[float, list[IPAddress] | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[list[IPAddress]]] = {}

    async def resolve(self, host: str) -> list[IPAddress]:
        """Addresses for ``host`` in preference order; raises :class:`ResolveError`."""
        literal = parse_ip(host)
        if literal is not None:
            return [literal]
        found = self.hosts.lookup(host)
        if found is not None:
            return found
        key = host.lower().rstrip(".")
        now = time.monotonic()
        entry = self._cache.get(key)
        if entry is not None:
            expires, addrs = entry
            if now < expires:
                if addrs is None:
                    raise ResolveError(f"cannot resolve {host} (cached failure)")
                return addrs
            del self._cache[key]
        waiter = self._inflight.get(key)
        if waiter is not None:
            return await asyncio.shield(waiter)
        loop = asyncio.get_running_loop()
        waiter = self._inflight[key] = loop.create_future()
        try:
            addrs = await self._query(key)
        except OSError as e:
            self._store(key, None, self.negative_ttl)
            err = ResolveError(f"cannot resolve {host}: {e.strerror or e}")
            waiter.set_exception(err)
            waiter.exception()  # marks it retrieved when nobody else was waiting
            raise err from None
        except BaseException:
            # This lookup was cancelled (its client left, a connect deadline passed): the
            # others sharing it must not wait forever.
            if not waiter.done():
                waiter.set_exception(ResolveError(f"the lookup of {host} was abandoned"))
                waiter.exception()
            raise
        finally:
            self._inflight.pop(key, None)
        self._store(key, addrs, self.ttl)
        waiter.set_result(addrs)
        return addrs

    async def _query(self, host: str) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        out: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            ip = parse_ip(str(sockaddr[0]))
            if ip is not None and ip not in out:
                out.append(ip)
        if not out:
            raise ResolveError(f"no addresses for {host}")
        return out

    def _store(self, key: str, addrs: list[IPAddress] | None, ttl: float) -> None:
        self._cache[key] = (time.monotonic() + ttl, addrs)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


def interleave(addrs: Sequence[IPAddress]) -> list[IPAddress]:
    """RFC 8305 section 4: alternate families, starting with the first one given."""
    if not addrs:
        return []
    first = [a for a in addrs if a.version == addrs[0].version]
    other = [a for a in addrs if a.version != addrs[0].version]
    out: list[IPAddress] = []
    for i in range(max(len(first), len(other))):
        if i < len(first):
            out.append(first[i])
        if i < len(other):
            out.append(other[i])
    return out


async def happy_connect(
    addrs: Sequence[IPAddress],
    port: int,
    factory: Callable[[], P],
    delay: float,
) -> tuple[asyncio.Transport, P]:
    """Connect to the first of ``addrs`` that answers; a new attempt starts every ``delay``
    seconds or as soon as the previous one fails. Losers are closed."""
    loop = asyncio.get_running_loop()
    order = interleave(addrs)
    if not order:
        raise OSError("no address to connect to")
    errors: list[BaseException] = []
    pending: set[asyncio.Task[tuple[asyncio.Transport, P]]] = set()
    index = 0
    try:
        while True:
            if index < len(order):
                ip = order[index]
                index += 1
                coro = loop.create_connection(factory, str(ip), port)
                pending.add(loop.create_task(coro, name=f"connect {ip}:{port}"))
            if not pending:
                break
            more = index < len(order)
            done, pending = await asyncio.wait(
                pending, timeout=delay if more else None, return_when=asyncio.FIRST_COMPLETED
            )
            winner: tuple[asyncio.Transport, P] | None = None
            for task in done:
                exc = task.exception()
                if exc is not None:
                    errors.append(exc)
                elif winner is None:
                    winner = task.result()
                else:
                    task.result()[0].close()
            if winner is not None:
                return winner
    finally:
        for task in pending:
            task.cancel()
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, tuple):
                result[0].close()
    refused = [e for e in errors if isinstance(e, ConnectionRefusedError)]
    if refused and len(refused) == len(errors):
        raise ConnectionRefusedError(refused[0].errno, f"connection refused by {order[0]}:{port}")
    last = errors[-1] if errors else OSError("connect failed")
    raise OSError(getattr(last, "errno", None), f"connect to port {port} failed: {last}")
