"""TLS termination: one server context per listening address, certificates chosen by SNI.

Every TLS server on an address brings a certificate for its ``server_names``; the default
server's (else the first one's) certificate answers a client that sends no name or an unknown
one, and its protocol settings (versions, ciphers, ALPN, tickets) hold for the address, since
they are negotiated before the name is known. Certificates and keys are checked when the
config is built: a key readable by group or others, or one that does not match its
certificate, stops the load with a message naming the file.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from ferryman.config.schema import Http2, Server, Tls
from ferryman.tls import TlsError
from ferryman.tls.certs import check_pair, default_ca_dir, make_cert

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class ListenerTls:
    """The SSL contexts of one address and the SNI table that picks among them."""

    def __init__(
        self, address: str, servers: list[Server], http2: Http2, create_missing: bool = True
    ) -> None:
        self.address = address
        tls_servers = [s for s in servers if s.tls is not None]
        first = next((s for s in tls_servers if s.default), tls_servers[0])
        assert first.tls is not None
        self.settings = first.tls
        self.alpn = [p for p in self.settings.alpn if p != "h2" or http2.enabled]
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcards: list[tuple[str, ssl.SSLContext]] = []
        default: ssl.SSLContext | None = None
        for server in tls_servers:
            assert server.tls is not None
            ctx, cert_names = self._context(server.tls, server.server_names, create_missing)
            if server is first:
                default = ctx
            for name in server.server_names or cert_names:
                name = name.lower().rstrip(".")
                if name.startswith("."):
                    # nginx's ".example.com": example.com itself and *.example.com.
                    self.exact.setdefault(name[1:], ctx)
                    self.wildcards.append((name, ctx))
                elif name.startswith("*."):
                    self.wildcards.append((name[1:], ctx))
                else:
                    self.exact.setdefault(name, ctx)
        self.wildcards.sort(key=lambda w: -len(w[0]))
        assert default is not None
        self.context = default
        default.sni_callback = self._on_sni

    def _context(
        self, tls: Tls, names: list[str], create_missing: bool
    ) -> tuple[ssl.SSLContext, list[str]]:
        cert, key = Path(tls.cert), Path(tls.key)
        if tls.auto_create and create_missing and not (cert.exists() and key.exists()):
            made = [m for n in names for m in _cert_names(n)] or ["localhost"]
            make_cert(made, cert, key, default_ca_dir())
        cert_names = check_pair(cert, key)
        settings = self.settings
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _VERSIONS[settings.min_version]
        ctx.maximum_version = _VERSIONS[settings.max_version]
        try:
            ctx.set_ciphers(settings.ciphers)
        except ssl.SSLError:
            raise TlsError(f"{self.address}: no usable cipher in {settings.ciphers!r}") from None
        ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        if not settings.session_tickets:
            ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = settings.session_ticket_count if settings.session_tickets else 0
        ctx.set_alpn_protocols(self.alpn)
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"{cert}: cannot load the certificate and key: {e}") from None
        return ctx, cert_names

    def lookup(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        for suffix, c in self.wildcards:
            # ``*.example.com`` covers one label, as certificates do.
            if name.endswith(suffix) and "." not in name[: -len(suffix)]:
                return c
        return None

    def _on_sni(self, sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> int | None:
        if name:
            sslobj.ferryman_sni = name
            chosen = self.lookup(name)
            if chosen is not None and chosen is not ctx:
                sslobj.context = chosen
        return None


def _cert_names(name: str) -> list[str]:
    """The certificate names a server name needs: ``.example.com`` stands for two."""
    if name.startswith("."):
        return [name[1:], "*" + name]
    return [name]


def tls_facts(transport: Any) -> tuple[dict[str, str], str | None]:
    """What a TLS connection negotiated, for ``ctx.tls`` and the log; and the ALPN choice."""
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return {}, None
    cipher = sslobj.cipher()
    alpn = sslobj.selected_alpn_protocol()
    facts = {
        "protocol": sslobj.version() or "",
        "cipher": cipher[0] if cipher else "",
        "server_name": getattr(sslobj, "ferryman_sni", ""),
        "alpn": alpn or "",
        "session_reused": "r" if sslobj.session_reused else ".",
    }
    return facts, alpn


def build_listener_tls(
    servers_by_address: dict[str, list[Server]], http2: Http2, create_missing: bool = True
) -> dict[str, ListenerTls]:
    out: dict[str, ListenerTls] = {}
    for address, servers in servers_by_address.items():
        if any(s.tls is not None for s in servers):
            out[address] = ListenerTls(address, servers, http2, create_missing)
    return out
