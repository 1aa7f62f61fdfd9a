"""The ``forward:`` section: Ferryman as a forward proxy (HTTP, CONNECT, SOCKS5).

Kept apart from ``schema.py`` so the reverse-proxy schema does not grow a second topic; it
imports nothing from ``schema`` at import time (``schema`` imports this module).

Safety rules checked here, at load time: a forward listener on a non-loopback address with
neither ``auth`` nor ``clients`` is refused unless ``allow_open_proxy`` says the operator
means it; ``via`` parents and domain patterns must parse.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ferryman.config.base import Duration, beside_config
from ferryman.config.base import Model as _Model
from ferryman.config.base import parse_hostport as _hostport

# A host name as it travels in HTTP: ASCII labels (IDNs in punycode), lower case.
HOSTNAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?:\.(?!-)[a-z0-9_-]{1,63})*$")


def ascii_name(name: str) -> str | None:
    """``name`` as every rule, table and lookup compares it: ASCII with IDN labels in
    punycode (``bücher.test`` is ``xn--bcher-kva.test``), lower case, no trailing dot.
    None when it is not a host name (CR, LF, spaces, ``:``, ``%``, empty labels...)."""
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.lower()
    if len(name) > 253 or not HOSTNAME.match(name):
        return None
    return name


def target_host(text: str) -> str | None:
    """A request's destination host (without brackets) in the one spelling the rules see:
    an IP address as ``ipaddress`` writes it, or :func:`ascii_name`. None when it is
    neither; IPv6 zone ids (``fe80::1%eth0``) are refused, not dropped."""
    if ":" in text:
        if "%" in text:
            return None
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    return ascii_name(text)


def _ip_literal(text: str) -> bool:
    """Whether ``text`` names an address rather than a host: a dotted quad, an IPv6
    address, or a spelling ``getaddrinfo`` reads as IPv4 (``2130706433``, ``127.1``,
    ``0x7f.1``)."""
    text = text.strip("[]")
    if ":" in text:
        return True
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def check_domain_pattern(pattern: str) -> str:
    """``host.test`` (exact), ``.host.test`` (it and below), ``*.host.test`` (below only),
    ``*`` (any) or ``re:REGEX`` (searched in the lower-cased ASCII name). Names are
    compared in ASCII, so an IDN here is turned into punycode. An IP address is refused:
    it has other spellings, and a network condition is the way to name it."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as e:
            raise ValueError(f"{pattern!r}: bad regex: {e}") from None
        return pattern
    if pattern == "*":
        return pattern
    prefix = "*." if pattern.startswith("*.") else "." if pattern.startswith(".") else ""
    if not prefix and _ip_literal(pattern):
        raise ValueError(
            f"{pattern!r} is an IP address, which domain patterns cannot match reliably "
            "(127.0.0.1 is also 127.1, 2130706433, ::ffff:127.0.0.1); use a network "
            "condition instead: 'destinations' in a rule, 'allow_destinations' for the "
            "address policy"
        )
    name = ascii_name(pattern[len(prefix) :])
    if name is None:
        raise ValueError(f"{pattern!r} is not a domain pattern")
    return prefix + name


def _networks(values: list[str]) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ValueError(f"{v!r} is not an address or network (CIDR)") from None
    return values


class ForwardUser(_Model):
    """A user defined in the config: ``password`` is a bcrypt or SHA-crypt hash."""

    password: str
    groups: list[str] = Field(default_factory=list)


class ForwardAuth(_Model):
    """Proxy authentication (HTTP Basic and SOCKS5 username/password) for every client."""

    realm: str = "Ferryman proxy"
    # An htpasswd file with bcrypt ($2a$/$2b$/$2y$) or SHA-crypt ($5$/$6$) hashes.
    htpasswd: str | None = None
    users: dict[str, ForwardUser] = Field(default_factory=dict)
    # Group name -> member user names (for ``rules[].groups``).
    groups: dict[str, list[str]] = Field(default_factory=dict)
    # How long a verified password is remembered, so bcrypt runs once, not per request.
    cache_ttl: Duration = 300.0

    @field_validator("htpasswd")
    @classmethod
    def _htpasswd(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        path = beside_config(v, info) or v
        if not os.path.isfile(path):
            raise ValueError(f"htpasswd file {path!r} does not exist")
        return path

    @model_validator(mode="after")
    def _someone(self) -> ForwardAuth:
        if self.htpasswd is None and not self.users:
            raise ValueError("auth needs an 'htpasswd' file or 'users'")
        return self


class ForwardRule(_Model):
    """One access rule; every condition given must hold (lists match any of their items).
    Rules are read in order and the first that matches decides, like Squid's http_access."""

    action: Literal["allow", "deny"]
    clients: list[str] = Field(default_factory=list)
    # User names; ``"*"`` is any authenticated user.
    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)
    # Networks (CIDR) of the address actually connected to, after name resolution; the way
    # to name IP addresses (domain patterns cannot: 127.0.0.1 is also 127.1 and 2130706433).
    destinations: list[str] = Field(default_factory=list)
    # Ports or ranges such as ``8000-8999``, read into (first, last) pairs.
    ports: list[tuple[int, int]] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    # The short reason sent with a 403 and written to the log.
    reason: str | None = None

    @field_validator("clients", "destinations")
    @classmethod
    def _clients(cls, v: list[str]) -> list[str]:
        return _networks(v)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [check_domain_pattern(p) for p in v]

    @field_validator("ports", mode="before")
    @classmethod
    def _ports(cls, v: object) -> object:
        return [port_range(p) for p in v] if isinstance(v, list) else v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]


def port_range(p: object) -> tuple[int, int]:
    """A port (``443``) or range (``"8000-8999"``) as (first, last); a pair already read
    (a tuple, which YAML does not make) is taken as it is."""
    if isinstance(p, float) and p.is_integer():
        p = int(p)
    if isinstance(p, tuple) and len(p) == 2 and all(type(x) is int for x in p):
        a, b = p
    elif isinstance(p, int | str):
        lo, _, hi = str(int(p) if isinstance(p, int) else p).partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"{p!r} is not a port or range such as 8000-8999") from None
    else:
        raise ValueError(f"{p!r} is not a port or range such as 8000-8999")
    if not 0 < a <= b < 65536:
        raise ValueError(f"{p!r}: ports are 1-65535")
    return a, b


class ChainRule(_Model):
    """Send destinations matching ``match`` through a parent proxy (``via``) or ``direct``."""

    match: list[str] = Field(min_length=1)
    # ``http://[user:pass@]host:port`` (CONNECT), ``socks5://[user:pass@]host:port``, or
    # ``direct``.
    via: str

    @field_validator("match")
    @classmethod
    def _match(cls, v: list[str]) -> list[str]:
        return [check_domain_pattern(p) for p in v]

    @field_validator("via")
    @classmethod
    def _via(cls, v: str) -> str:
        if v != "direct":
            parse_parent(v)
        return v


class Parent:
    """A parsed ``via`` URL."""

    __slots__ = ("host", "kind", "password", "port", "user")

    def __init__(self, kind: str, host: str, port: int, user: str, password: str) -> None:
        self.kind = kind
        self.host = host
        self.port = port
        self.user = user
        self.password = password

    def __repr__(self) -> str:
        return f"{self.kind}://{self.host}:{self.port}"


def parse_parent(url: str) -> Parent:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "socks5", "socks5h"):
        raise ValueError(f"{url!r}: a parent proxy is http://host:port or socks5://host:port")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r}: a parent proxy needs a host and a port")
    if parts.path not in ("", "/"):
        raise ValueError(f"{url!r}: a parent proxy URL has no path")
    kind = "socks5" if parts.scheme.startswith("socks5") else "http"
    return Parent(
        kind,
        parts.hostname,
        parts.port,
        unquote(parts.username or ""),
        unquote(parts.password or ""),
    )


class Pac(_Model):
    """A proxy auto-config file served at ``path`` on the HTTP forward listeners."""

    path: str = "/proxy.pac"
    # What browsers are told to use, such as ``PROXY proxy.example:3128; DIRECT``. Unset:
    # ``PROXY <first listen address>``.
    proxy: str | None = None
    # Hosts reached without the proxy (domain patterns as in rules; networks as CIDR).
    direct: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("path must start with '/'")
        return v

    @field_validator("direct")
    @classmethod
    def _direct(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                item = check_domain_pattern(item)  # names in ASCII, as browsers pass them
            out.append(item)
        return out


class Dns(_Model):
    # How long an answer is kept. getaddrinfo does not report record TTLs, so this is the TTL.
    cache_ttl: Duration = 60.0
    # How long a failed lookup is remembered.
    negative_ttl: Duration = 5.0
    max_entries: int = Field(default=10000, ge=1)
    # RFC 8305: the next address is tried this long after the previous one started.
    happy_eyeballs_delay: Duration = 0.25


class ForwardTimeouts(_Model):
    connect: Duration = 30.0
    # Plain HTTP: time to wait for the origin's answer.
    read: Duration = 60.0
    # Tunnels (CONNECT, SOCKS5) with no bytes either way for this long are closed.
    idle: Duration = 300.0
    # A client that has not finished its SOCKS handshake by then is dropped.
    handshake: Duration = 30.0


class ForwardLog(_Model):
    enabled: bool = True
    # ``text``: one line of ``key=value`` fields; ``json``: JSON lines.
    format: Literal["text", "json"] = "text"
    path: str = "stdout"


class Forward(_Model):
    # HTTP forward-proxy addresses (absolute-form requests, CONNECT). An address that is
    # also a server's ``listen`` serves both: origin-form requests go to the server.
    listen: list[str] = Field(default_factory=list)
    socks5_listen: list[str] = Field(default_factory=list)
    # Networks allowed to use the proxy at all; empty: any client.
    clients: list[str] = Field(default_factory=list)
    auth: ForwardAuth | None = None
    # Squid's SSL_ports: the ports tunnels (CONNECT and SOCKS) may reach. Plain HTTP
    # requests are not limited by it; use rules' ``ports`` for them.
    connect_ports: list[int] = Field(default_factory=lambda: [443])
    # Destinations in private, loopback, link-local, multicast or reserved ranges are refused
    # unless listed here (addresses or networks). Checked on the address connected to.
    allow_destinations: list[str] = Field(default_factory=list)
    # Static names: ``api.example.test`` or ``*.example.test`` -> addresses, before DNS.
    hosts: dict[str, list[str]] = Field(default_factory=dict)
    dns: Dns = Dns()
    rules: list[ForwardRule] = Field(default_factory=list)
    # When no rule matches (deny, as Squid does).
    default_action: Literal["allow", "deny"] = "deny"
    chain: list[ChainRule] = Field(default_factory=list)
    pac: Pac | None = None
    timeouts: ForwardTimeouts = ForwardTimeouts()
    # The name in the ``Via`` header added to requests and responses.
    via: str = "ferryman"
    access_log: ForwardLog = ForwardLog()
    # Permit a listener on a non-loopback address with no auth and no client networks.
    allow_open_proxy: bool = False

    @field_validator("listen", "socks5_listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        for item in v:
            _hostport(item)
        return v

    @field_validator("clients", "allow_destinations")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        return _networks(v)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, addrs in v.items():
            if not name or name.startswith("re:") or name.count("*") > 1:
                raise ValueError(f"{name!r}: hosts keys are names or *.suffix")
            if "*" in name and not name.startswith("*."):
                raise ValueError(f"{name!r}: a wildcard is written *.suffix")
            if not addrs:
                raise ValueError(f"{name!r} needs at least one address")
            for a in addrs:
                try:
                    ipaddress.ip_address(a)
                except ValueError:
                    raise ValueError(f"{name}: {a!r} is not an IP address") from None
        out: dict[str, list[str]] = {}
        for name, addrs in v.items():
            prefix = "*." if name.startswith("*.") else ""
            ascii = ascii_name(name[len(prefix) :])
            if ascii is None:
                raise ValueError(f"{name!r} is not a host name")
            out[prefix + ascii] = addrs
        return out

    @field_validator("connect_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 < p < 65536:
                raise ValueError(f"{p}: ports are 1-65535")
        return v

    @model_validator(mode="after")
    def _not_open(self) -> Forward:
        from ferryman.config.schema import LocatedError

        if not self.listen and not self.socks5_listen:
            raise ValueError("forward needs 'listen' or 'socks5_listen'")
        guarded = self.auth is not None or bool(self.clients) or self.allow_open_proxy
        for key in ("listen", "socks5_listen"):
            for i, address in enumerate(getattr(self, key)):
                if not guarded and not _loopback(_hostport(address)[0]):
                    raise LocatedError(
                        (key, i),
                        f"{address} is reachable from other machines and the proxy has no "
                        "'auth' and no 'clients': that is an open proxy. Add one of them, "
                        "or set allow_open_proxy: true if you mean it",
                    )
        if self.pac is not None and self.pac.proxy is None:
            if not self.listen:
                raise ValueError("pac needs 'proxy' when there is no HTTP 'listen' address")
            if _hostport(self.listen[0])[0] in ("0.0.0.0", "::"):
                raise LocatedError(
                    ("pac", "proxy"), "say which address browsers should use, such as PROXY h:p"
                )
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
