"""Which protocol a new connection speaks: HTTP/1.1 or HTTP/2.

On TLS listeners the answer is ALPN, known when the handshake is done (``connection_made``).
On plain listeners with ``http2.h2c``, it is the first bytes: the HTTP/2 connection preface
(prior knowledge), or anything else for HTTP/1.1. Either way the chosen protocol takes the
transport over and sees the connection from ``connection_made`` on, as if it had been there
from the start. Plain listeners without h2c never come here: their factory makes
:class:`H1Connection` directly, so the hot path has no extra hop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ferryman.http.h2conn import PREFACE
from ferryman.server.h1 import H1Connection
from ferryman.server.h2 import H2Server
from ferryman.server.listener import Listener
from ferryman.server.tls import tls_facts


class Negotiate(asyncio.Protocol):
    __slots__ = ("_buf", "_listener", "_timer", "_tls", "_transport")

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._transport: Any = None
        self._buf = b""
        self._tls: dict[str, str] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        if self._listener.tls is not None:
            facts, alpn = tls_facts(transport)
            self._tls = facts
            if alpn == "h2":
                self._hand_over(H2Server(self._listener, facts), b"")
            else:
                self._hand_over(self._h1(), b"")
            return
        # A client that sends a byte or two of what may be the preface and then nothing must
        # not hold the connection longer than a request head may take.
        timeout = self._listener.limits.client_header_timeout
        self._timer = asyncio.get_running_loop().call_later(timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        n = min(len(buf), len(PREFACE))
        if buf[:n] != PREFACE[:n]:
            self._hand_over(self._h1(), buf)
        elif n == len(PREFACE):
            self._hand_over(H2Server(self._listener, None), buf)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()

    def _h1(self) -> H1Connection:
        conn = H1Connection(self._listener)
        conn.tls = self._tls
        return conn

    def _hand_over(self, proto: asyncio.Protocol, data: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if data and not transport.is_closing():
            proto.data_received(data)


def factory(listener: Listener) -> Any:
    """The protocol factory for ``loop.create_server`` on one listener."""
    if listener.tls is None and not listener.http2.h2c:

        def plain() -> H1Connection:
            return H1Connection(listener)

        return plain

    def negotiate() -> Negotiate:
        return Negotiate(listener)

    return negotiate
