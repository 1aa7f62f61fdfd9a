"""TLS toward upstream servers: one client context per group, built at config load."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ferryman.config.schema import UpstreamTls
from ferryman.tls import TlsError
from ferryman.tls.certs import check_pair
from ferryman.upstream.peer import Peer


def client_context(config: UpstreamTls, alpn: list[str] | None = None) -> ssl.SSLContext:
    """Verification is on unless the config turns it off; the CA file, when given, replaces
    the system store so a private CA is the only one trusted for that group."""
    try:
        if config.ca_file is not None:
            ctx = ssl.create_default_context(cafile=config.ca_file)
        else:
            ctx = ssl.create_default_context()
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"{config.ca_file}: cannot load the CA file: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.cert is not None and config.key is not None:
        check_pair(Path(config.cert), Path(config.key))
        ctx.load_cert_chain(config.cert, config.key)
    ctx.set_alpn_protocols(alpn or ["http/1.1"])
    return ctx


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def dial(
    peer: Peer,
    factory: Callable[[], _P],
    tls: ssl.SSLContext | None,
    server_name: str | None,
) -> _P:
    """Connect to ``peer``, over TLS when it is an ``https://`` server (SNI: ``server_name``,
    else the peer's host)."""
    loop = asyncio.get_running_loop()
    if peer.tls and tls is not None:
        _, conn = await loop.create_connection(
            factory, peer.host, peer.port, ssl=tls, server_hostname=server_name or peer.host
        )
    else:
        _, conn = await loop.create_connection(factory, peer.host, peer.port)
    return conn
