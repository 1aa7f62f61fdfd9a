"""HTTP/2 connections to upstream servers (``protocol: h2c`` or ``h2``), for gRPC and the like.

Theory of operation. One :class:`UpstreamH2` per peer carries many exchanges at once, each on
its own stream; :class:`H2Pool` keeps that connection per peer and opens another when it has
closed or has no stream left to give; the one replaced closes once its streams have ended.
Exchanges implement :class:`StreamOwner`. Response DATA is acknowledged (WINDOW_UPDATE) only
as the owner passes it on: while the client side is paused the stream's window closes and the
upstream stops sending, which is the whole of the backpressure toward the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Protocol

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from ferryman.http.headers import HeaderList
from ferryman.upstream.peer import Peer
from ferryman.upstream.tls import dial

_CONFIG = H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
_WINDOW = 16 << 20


class StreamOwner(Protocol):
    def on_h2_response(self, status: int, headers: HeaderList, ended: bool) -> None: ...
    def on_h2_data(self, data: bytes, flow: int) -> None: ...
    def on_h2_trailers(self, trailers: HeaderList) -> None: ...
    def on_h2_end(self) -> None: ...
    def on_h2_lost(self, reason: str) -> None: ...
    def on_h2_window(self) -> None: ...


class UpstreamH2(asyncio.Protocol):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.conn = H2Connection(config=_CONFIG)
        self.transport: Any = None
        self.owners: dict[int, StreamOwner] = {}
        self.closed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        conn = self.conn
        conn.initiate_connection()
        conn.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20, SettingCodes.ENABLE_PUSH: 0}
        )
        conn.increment_flow_control_window(_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            self._fail(f"HTTP/2 protocol error from upstream: {e}")
            return
        owners = self.owners
        for ev in events:
            if isinstance(ev, DataReceived):
                owner = owners.get(ev.stream_id)
                if owner is not None:
                    owner.on_h2_data(ev.data, ev.flow_controlled_length)
                else:
                    self.ack(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, ResponseReceived):
                owner = owners.get(ev.stream_id)
                if owner is not None:
                    headers = list(ev.headers or [])
                    status = int(dict(headers).get(b":status", b"502"))
                    rest = [(k, v) for k, v in headers if k[:1] != b":"]
                    owner.on_h2_response(status, rest, ev.stream_ended is not None)
            elif isinstance(ev, TrailersReceived):
                owner = owners.get(ev.stream_id)
                if owner is not None:
                    owner.on_h2_trailers(list(ev.headers or []))
            elif isinstance(ev, StreamEnded):
                owner = owners.pop(ev.stream_id, None)
                if owner is not None:
                    owner.on_h2_end()
            elif isinstance(ev, StreamReset):
                owner = owners.pop(ev.stream_id, None)
                if owner is not None:
                    owner.on_h2_lost(f"upstream reset the stream (code {ev.error_code})")
            elif isinstance(ev, WindowUpdated):
                for owner in list(owners.values()):
                    owner.on_h2_window()
            elif isinstance(ev, ConnectionTerminated):
                self.closed = True  # no new streams; those below last_stream_id may finish
                last = ev.last_stream_id or 0
                for sid in [s for s in owners if s > last]:
                    owners.pop(sid).on_h2_lost("upstream sent GOAWAY")
        self.flush()
        self._close_if_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(str(exc) if exc else "upstream closed the connection")

    # for exchanges

    @property
    def usable(self) -> bool:
        if self.closed or self.transport is None:
            return False
        limit = self.conn.remote_settings.max_concurrent_streams
        return self.conn.open_outbound_streams < limit

    def open_stream(self, owner: StreamOwner, headers: HeaderList, end: bool) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end)
        self.owners[sid] = owner
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end: bool) -> int:
        """Send what the windows allow of ``data``; how many bytes went."""
        conn = self.conn
        room = min(conn.local_flow_control_window(sid), len(data))
        frame = conn.max_outbound_frame_size
        sent = 0
        while sent < room:
            n = min(frame, room - sent)
            last = end and sent + n == len(data)
            conn.send_data(sid, data[sent : sent + n], end_stream=last)
            sent += n
        if end and not data:
            conn.end_stream(sid)
        self.flush()
        return sent

    def ack(self, sid: int, size: int) -> None:
        with contextlib.suppress(ProtocolError):
            self.conn.acknowledge_received_data(size, sid)
        self.flush()

    def cancel(self, sid: int) -> None:
        self.owners.pop(sid, None)
        with contextlib.suppress(ProtocolError):
            self.conn.reset_stream(sid, ErrorCodes.CANCEL)
        self.flush()
        self._close_if_done()

    def retire(self) -> None:
        """Take no new streams, and close once those open have ended (the pool has replaced
        this connection, which nothing would close otherwise)."""
        self.closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.closed and not self.owners and self.transport is not None:
            self.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection()
            self.flush()
            self.transport.close()

    def _fail(self, reason: str) -> None:
        self.closed = True
        owners, self.owners = self.owners, {}
        for owner in owners.values():
            owner.on_h2_lost(reason)
        if self.transport is not None:
            self.transport.close()


class H2Pool:
    """One multiplexed connection per peer, opened on first use."""

    def __init__(self, tls: ssl.SSLContext | None, server_name: str | None) -> None:
        self.tls = tls
        self.server_name = server_name
        self._conns: dict[Peer, UpstreamH2] = {}
        self._opening: dict[Peer, asyncio.Future[UpstreamH2]] = {}

    def ready(self, peer: Peer) -> UpstreamH2 | None:
        conn = self._conns.get(peer)
        return conn if conn is not None and conn.usable else None

    async def connect(self, peer: Peer) -> UpstreamH2:
        """The peer's connection; concurrent callers share one connection attempt."""
        pending = self._opening.get(peer)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[UpstreamH2] = loop.create_future()
        self._opening[peer] = future
        try:
            conn = await dial(peer, lambda: UpstreamH2(peer), self.tls, self.server_name)
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: a lone caller must not leave it unobserved
            raise
        finally:
            self._opening.pop(peer, None)
        old = self._conns.get(peer)
        self._conns[peer] = conn
        if old is not None:
            old.retire()
        future.set_result(conn)
        return conn

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
