"""Upstream proxy chaining: which destinations go through a parent proxy, and the handshakes.

Rules are read in order; the first whose domain patterns match the destination decides:
``via: http://parent:3128`` (HTTP CONNECT for tunnels, absolute-form for plain HTTP),
``via: socks5://parent:1080`` (a SOCKS5 CONNECT for both), or ``via: direct``. No match
means direct. Destinations that go through a parent are resolved by the parent, not here,
so the parent's address policy is the one that applies to them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Protocol

from ferryman.config.forward import ChainRule, Parent, parse_parent, target_host
from ferryman.forward.acl import (
    SOCKS_ADDRESS_NOT_SUPPORTED,
    SOCKS_GENERAL_FAILURE,
    SOCKS_NOT_ALLOWED,
    DomainSet,
    Refused,
)
from ferryman.forward.socks5 import ClientMachine, SocksError

_MAX_HEAD = 16384


class ChainRouter:
    def __init__(self, rules: Sequence[ChainRule]) -> None:
        self.rules: list[tuple[DomainSet, Parent | None]] = [
            (DomainSet(r.match), None if r.via == "direct" else parse_parent(r.via)) for r in rules
        ]

    def pick(self, host: str) -> Parent | None:
        """The parent for ``host``, or None to connect directly."""
        for domains, parent in self.rules:
            if domains.match(host):
                return parent
        return None


class Stream(Protocol):
    """The handshake side of an outbound connection."""

    def write(self, data: bytes) -> None: ...
    async def read_some(self) -> bytes: ...


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def basic_credentials(user: str, password: str) -> bytes:
    token = base64.b64encode(f"{user}:{password}".encode())
    return b"Basic " + token


async def http_connect(stream: Stream, host: str, port: int, parent: Parent) -> bytes:
    """Open a tunnel through an HTTP parent with CONNECT; returns bytes after its answer."""
    if target_host(host) != host:  # the entry points allow nothing else; CR/LF never pass
        raise Refused(400, f"bad destination host {host!r}", SOCKS_ADDRESS_NOT_SUPPORTED)
    target = authority(host, port).encode("ascii")
    head = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (target, target)
    if parent.user:
        head += b"Proxy-Authorization: " + basic_credentials(parent.user, parent.password)
        head += b"\r\n"
    stream.write(head + b"\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.read_some()
        buf += data
        if len(buf) > _MAX_HEAD:
            raise Refused(502, f"parent proxy {parent}: answer head too large")
    answer, _, rest = buf.partition(b"\r\n\r\n")
    status_line = answer.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise Refused(502, f"parent proxy {parent}: not an HTTP answer")
    status = int(parts[1])
    if 200 <= status < 300:
        return rest
    if status == 403:
        raise Refused(403, f"parent proxy {parent} refused the destination", SOCKS_NOT_ALLOWED)
    raise Refused(502, f"parent proxy {parent} answered {status}", SOCKS_GENERAL_FAILURE)


async def socks5_connect(stream: Stream, host: str, port: int, parent: Parent) -> bytes:
    """Open a tunnel through a SOCKS5 parent (the parent resolves names)."""
    machine = ClientMachine(host, port, parent.user, parent.password)
    stream.write(machine.start())
    while True:
        data = await stream.read_some()
        try:
            out, done, rest = machine.feed(data)
        except SocksError as e:
            status = 403 if e.code == SOCKS_NOT_ALLOWED else 502
            raise Refused(status, str(e), e.code) from None
        if out:
            stream.write(out)
        if done:
            return rest
