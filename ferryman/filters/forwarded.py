"""X-Forwarded-*, X-Real-IP and RFC 7239 ``Forwarded`` on the request to the upstream.

The client address comes from the socket, unless the peer is a trusted proxy, in which case the
right-most untrusted address of the incoming X-Forwarded-For is the client (nginx realip).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from ferryman.context import RequestContext
from ferryman.filters.base import Filter
from ferryman.http.headers import HeaderList

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_FORWARDED: Final = frozenset(
    {b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)


class ForwardedHeaders(Filter):
    def __init__(self, trusted: Sequence[str] = (), rfc7239: bool = False) -> None:
        super().__init__()
        self._trusted: list[IPNetwork] = [ipaddress.ip_network(t, strict=False) for t in trusted]
        self._rfc7239 = rfc7239

    def _is_trusted(self, addr: str) -> bool:
        if not self._trusted:
            return False
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def client_ip(self, ctx: RequestContext, incoming: list[bytes]) -> str:
        if not self._is_trusted(ctx.client_addr):
            return ctx.client_addr
        chain = [a.strip().decode("latin-1") for v in incoming for a in v.split(b",")]
        for addr in reversed(chain):
            if not self._is_trusted(addr):
                return addr
        return chain[0] if chain else ctx.client_addr

    def on_upstream_request(self, ctx: RequestContext, headers: HeaderList) -> None:
        peer = ctx.client_addr.encode("latin-1")
        proto = ctx.scheme.encode("ascii")
        real_ip = peer
        xff = peer
        earlier: list[bytes] = []
        prior = [h for h in headers if h[0] in _FORWARDED]
        if prior:
            incoming = [v for k, v in prior if k == b"x-forwarded-for"]
            # Like nginx's $proxy_add_x_forwarded_for: what came in, then the socket's peer.
            if incoming:
                xff = b", ".join([*incoming, peer])
            if self._is_trusted(ctx.client_addr):
                real_ip = self.client_ip(ctx, incoming).encode("latin-1")
                proto = next((v for k, v in prior if k == b"x-forwarded-proto"), proto)
                # An untrusted client's RFC 7239 claims are dropped, a trusted proxy's kept.
                earlier = [v for k, v in prior if k == b"forwarded"]
            headers[:] = [h for h in headers if h[0] not in _FORWARDED]
        headers += (
            (b"x-real-ip", real_ip),
            (b"x-forwarded-for", xff),
            (b"x-forwarded-proto", proto),
            (b"x-forwarded-host", ctx.host.encode("latin-1")),
        )
        if self._rfc7239:
            node = ctx.client_addr
            if ":" in node:
                node = f'"[{node}]"'
            value = f"for={node};host={ctx.host};proto={ctx.scheme}".encode("latin-1")
            if earlier:
                value = b", ".join(earlier) + b", " + value
            headers.append((b"forwarded", value))
        elif earlier:
            headers.append((b"forwarded", b", ".join(earlier)))
