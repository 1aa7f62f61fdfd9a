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
    """What the rules look at. ``groups`` are the authenticated user's; ``addr`` is the
    address about to be connected to, once it is known (see :meth:`AccessPolicy.check`)."""

    __slots__ = ("addr", "client", "groups", "host", "method", "port", "user")

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
        self.addr: IPAddress | None = None

    def at(self, addr: IPAddress) -> Request:
        """This request, about to connect to ``addr``."""
        req = Request(self.client, self.user, self.groups, self.host, self.port, self.method)
        req.addr = addr
        return req


class Rule:
    __slots__ = (
        "allow",
        "clients",
        "destinations",
        "domains",
        "groups",
        "methods",
        "ports",
        "reason",
        "users",
    )

    def __init__(self, config: ForwardRule) -> None:
        self.allow = config.action == "allow"
        self.clients = NetSet(config.clients)
        self.users = frozenset(config.users)
        self.groups = frozenset(config.groups)
        self.domains = DomainSet(config.domains)
        self.destinations = NetSet(config.destinations)
        self.ports = tuple(config.ports)  # (first, last) pairs, read by the config
        self.methods = frozenset(config.methods)
        self.reason = config.reason or ("allowed" if self.allow else "denied by an access rule")

    def matches(self, req: Request) -> bool:
        """Whether every condition holds; a ``destinations`` condition does not hold while
        the address is unknown (see :meth:`matches_but_address`)."""
        if self.destinations and (req.addr is None or not self.destinations.contains(req.addr)):
            return False
        return self.matches_but_address(req)

    def matches_but_address(self, req: Request) -> bool:
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
        # Whether some rule looks at the address connected to (``destinations``).
        self.uses_destinations = any(r.destinations for r in self.rules)

    def client_allowed(self, client: IPAddress | None) -> bool:
        """The network check done before anything else, authentication included."""
        if not self.clients:
            return True
        return client is not None and self.clients.contains(client)

    def check(self, req: Request, final: bool = True) -> bool:
        """Raise :class:`Refused` (403) unless the request may go on.

        Rules with ``destinations`` need the address actually connected to (``req.addr``).
        Before it is known (``final`` false) the check stops at the first such rule whose
        other conditions hold and returns False: the caller checks again with each address
        (``req.at(addr)``) before connecting. With ``final`` true and no address (a parent
        proxy resolves the name), a ``destinations`` condition does not hold. True means
        decided: allowed."""
        if req.method in _TUNNELS and req.port not in self.connect_ports:
            raise denied(f"{_TUNNELS[req.method]} to port {req.port} is not allowed")
        for rule in self.rules:
            if rule.matches(req):
                if rule.allow:
                    return True
                raise denied(rule.reason)
            if (
                not final
                and req.addr is None
                and rule.destinations
                and rule.matches_but_address(req)
            ):
                return False
        if not self.default_allow:
            raise denied("no access rule allows this request")
        return True


# Tunnels, which ``connect_ports`` limits (Squid's SSL_ports): CONNECT and SOCKS connects.
_TUNNELS = {"CONNECT": "CONNECT", "SOCKS": "a SOCKS connect"}


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
    for net, name in _MORE_SPECIAL:
        if addr.version == net.version and addr in net:
            return name
    return None


_MORE_SPECIAL: list[tuple[IPNetwork, str]] = [
    (ipaddress.ip_network("100.64.0.0/10"), "shared (CGNAT)"),
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments"),
    (ipaddress.ip_network("fec0::/10"), "site-local"),
    # 6to4 addresses carry an IPv4 address (2002:7f00:1:: is 127.0.0.1) that a relay reaches.
    (ipaddress.ip_network("2002::/16"), "6to4"),
]
