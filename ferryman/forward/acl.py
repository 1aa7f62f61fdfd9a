"""Who may use the proxy and where to: rules evaluated in order, and the address policy.

Pure decisions over values (no sockets, no asyncio), built once at config load:

- :class:`AccessPolicy` reads the rules like Squid's ``http_access``: the first rule whose
  conditions all hold decides; none matching gives ``default_action``.
- :class:`AddressPolicy` refuses destinations in private, loopback, link-local, multicast,
  reserved and unspecified ranges unless they are listed in ``allow_destinations``. It is
  asked about each *resolved* address just before connecting, so a name that resolves to a
  forbidden address is refused however it was spelled (no DNS-rebinding bypass).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from ferryman.config.forward import ForwardRule, ascii_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# SOCKS5 reply codes (RFC 1928 section 6).
SOCKS_GENERAL_FAILURE = 0x01
SOCKS_NOT_ALLOWED = 0x02
SOCKS_NETWORK_UNREACHABLE = 0x03
SOCKS_HOST_UNREACHABLE = 0x04
SOCKS_CONNECTION_REFUSED = 0x05
SOCKS_COMMAND_NOT_SUPPORTED = 0x07
SOCKS_ADDRESS_NOT_SUPPORTED = 0x08


class Refused(Exception):
    """A request the proxy will not carry out, with the answer each protocol gives."""

    def __init__(self, status: int, reason: str, socks_code: int = SOCKS_NOT_ALLOWED) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.socks_code = socks_code


def denied(reason: str) -> Refused:
    return Refused(403, reason, SOCKS_NOT_ALLOWED)


class DomainSet:
    """Domain patterns: ``a.test`` exact, ``.a.test`` it and below, ``*.a.test`` below only,
    ``*`` anything, ``re:REGEX`` searched in the name."""

    __slots__ = ("any", "exact", "regexes", "suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.any = False
        self.exact: set[str] = set()
        suffixes: list[str] = []
        self.regexes: list[re.Pattern[str]] = []
        for p in patterns:
            if p == "*":
                self.any = True
            elif p.startswith("re:"):
                self.regexes.append(re.compile(p[3:]))
            elif p.startswith("*."):
                suffixes.append(p[1:])
            elif p.startswith("."):
                suffixes.append(p)
                self.exact.add(p[1:])
            else:
                self.exact.add(p.lower())
        self.suffixes = tuple(suffixes)

    def __bool__(self) -> bool:
        return self.any or bool(self.exact or self.suffixes or self.regexes)

    def match(self, host: str) -> bool:
        host = ascii_name(host) or host.lower().rstrip(".")
        if self.any or host in self.exact:
            return True
        if self.suffixes and host.endswith(self.suffixes):
            return True
        return any(r.search(host) for r in self.regexes)


class NetSet:
    __slots__ = ("nets",)

    def __init__(self, values: Iterable[str]) -> None:
        self.nets: list[IPNetwork] = [ipaddress.ip_network(v, strict=False) for v in values]

    def __bool__(self) -> bool:
        return bool(self.nets)

    def contains(self, addr: IPAddress) -> bool:
        addr = unmap(addr)
        return any(addr.version == n.version and addr in n for n in self.nets)


def unmap(addr: IPAddress) -> IPAddress:
    """``::ffff:127.0.0.2`` is 127.0.0.2 for every rule here."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").partition("%")[0])
    except ValueError:
        return None


class Request:
    """What the rules look at. ``groups`` are the authenticated user's."""

    __slots__ = ("client", "groups", "host", "method", "port", "user")

    def __init__(
        self,
        client: IPAddress | None,
        user: str,
        groups: frozenset[str],
        host: str,
        port: int,
        method: str,
    ) -> None:
        self.client = client
        self.user = user
        self.groups = groups
        self.host = host
        self.port = port
        self.method = method


class Rule:
    __slots__ = ("allow", "clients", "domains", "groups", "methods", "ports", "reason", "users")

    def __init__(self, config: ForwardRule) -> None:
        self.allow = config.action == "allow"
        self.clients = NetSet(config.clients)
        self.users = frozenset(config.users)
        self.groups = frozenset(config.groups)
        self.domains = DomainSet(config.domains)
        self.ports: tuple[tuple[int, int], ...] = tuple(_port_range(p) for p in config.ports)
        self.methods = frozenset(config.methods)
        self.reason = config.reason or ("allowed" if self.allow else "denied by an access rule")

    def matches(self, req: Request) -> bool:
        if self.clients and (req.client is None or not self.clients.contains(req.client)):
            return False
        if self.users or self.groups:
            who = req.user and (
                "*" in self.users or req.user in self.users or req.groups & self.groups
            )
            if not who:
                return False
        if self.domains and not self.domains.match(req.host):
            return False
        if self.ports and not any(lo <= req.port <= hi for lo, hi in self.ports):
            return False
        return not (self.methods and req.method not in self.methods)


def _port_range(p: int | str) -> tuple[int, int]:
    lo, _, hi = str(p).partition("-")
    return int(lo), int(hi or lo)


class AccessPolicy:
    def __init__(
        self,
        rules: Sequence[ForwardRule],
        default_allow: bool,
        clients: Iterable[str],
        connect_ports: Iterable[int],
    ) -> None:
        self.rules = [Rule(r) for r in rules]
        self.default_allow = default_allow
        self.clients = NetSet(clients)
        self.connect_ports = frozenset(connect_ports)

    def client_allowed(self, client: IPAddress | None) -> bool:
        """The network check done before anything else, authentication included."""
        if not self.clients:
            return True
        return client is not None and self.clients.contains(client)

    def check(self, req: Request) -> None:
        """Raise :class:`Refused` (403) unless the request may go on."""
        if req.method == "CONNECT" and req.port not in self.connect_ports:
            raise denied(f"CONNECT to port {req.port} is not allowed")
        for rule in self.rules:
            if rule.matches(req):
                if rule.allow:
                    return
                raise denied(rule.reason)
        if not self.default_allow:
            raise denied("no access rule allows this request")


class AddressPolicy:
    def __init__(self, allow: Iterable[str]) -> None:
        self.allow = NetSet(allow)

    def check(self, addr: IPAddress) -> str | None:
        """None if ``addr`` may be connected to, else why not."""
        addr = unmap(addr)
        kind = special_range(addr)
        if kind is None or self.allow.contains(addr):
            return None
        return f"{addr} is a {kind} address"

    def filter(self, addrs: Sequence[IPAddress]) -> tuple[list[IPAddress], str | None]:
        """The allowed addresses, in order, and the first reason one was dropped."""
        kept: list[IPAddress] = []
        why: str | None = None
        for a in addrs:
            reason = self.check(a)
            if reason is None:
                kept.append(a)
            elif why is None:
                why = reason
        return kept, why


def special_range(addr: IPAddress) -> str | None:
    """The name of the non-public range ``addr`` is in, or None for a public address."""
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "shared (CGNAT)"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")
