"""HTTP/2 client connections: the transport, its streams, flow control and shutdown.

Theory of operation. One :class:`H2Server` per connection owns the transport and a
:class:`ServerH2` state machine; each request is an :class:`H2Stream`, which is the
:class:`Downstream` its handler answers through and the :class:`pipeline.Side` the shared
request pipeline starts it on, exactly as an HTTP/1.1 connection is.

Responses are queued per stream and sent as the client's flow-control windows allow. A
stream that holds more than :data:`_HIGH_WATER` unsent bytes pauses its handler (which stops
reading its upstream); it resumes below :data:`_LOW_WATER`. A full transport buffer pauses
every stream's handler. Request bodies are acknowledged (WINDOW_UPDATE) as they are passed
on, and not while the handler has asked to pause reading, so a client can never have more
in flight than its window. Small frames made in one turn of the event loop leave in one
write; a large body leaves as it comes. :class:`H2Stream` lives in ``h2stream.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.stream import StreamInputs
from hyperframe.frame import GoAwayFrame

from ferryman.context import RequestContext
from ferryman.http.h2conn import (
    Abuse,
    BadRequest,
    ServerH2,
    encode_response,
    request_head,
)
from ferryman.server import pipeline
from ferryman.server.h2stream import H2Stream
from ferryman.server.listener import Listener

log = logging.getLogger("ferryman")

_HIGH_WATER = 1 << 20
_LOW_WATER = 256 << 10
_WRITE_NOW = 64 << 10
_FRAME_HEAD = struct.Struct(">BHBBL")
_DATA, _HEADERS = 0x0, 0x1
_END_STREAM, _END_HEADERS = 0x1, 0x4


def _frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """A frame's 9-byte header (RFC 9113 4.1)."""
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class H2Server(asyncio.Protocol):
    __slots__ = (
        "_flush_handle",
        "_idle_timer",
        "_last_active",
        "_loop",
        "_out",
        "client_addr",
        "client_port",
        "closed",
        "draining",
        "h2",
        "listener",
        "streams",
        "tls",
        "total_streams",
        "transport",
        "write_paused",
    )

    def __init__(self, listener: Listener, tls: dict[str, str] | None) -> None:
        self.listener = listener
        self.tls = tls
        self.h2 = ServerH2(listener.h2_limits)
        self.transport: Any = None
        self.streams: dict[int, H2Stream] = {}
        self.total_streams = 0
        self.client_addr = ""
        self.client_port = 0
        self.closed = False
        self.draining = False
        self.write_paused = False
        self._loop = asyncio.get_running_loop()
        self._flush_handle: asyncio.Handle | None = None
        # Frames to write, in order, at the end of this turn of the loop.
        self._out: list[bytes | memoryview] = []
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = self._loop.time()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        listener = self.listener
        if len(listener.connections) >= listener.limits.max_connections:
            transport.close()
            self.closed = True
            return
        listener.connections.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_addr, self.client_port = peer[0], peer[1]
        self.h2.initiate()
        self._write_now()
        first = min(listener.http2.idle_timeout, listener.limits.client_body_timeout)
        self._idle_timer = self._loop.call_later(first, self._on_idle)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = self._loop.time()
        self._last_active = now
        try:
            events = self.h2.receive(data, now)
        except Abuse as e:
            log.warning("http2 %s: %s; closing", self.client_addr, e)
            self.h2.calm_down()
            self._close_now()
            return
        except ProtocolError as e:
            log.info("http2 %s: protocol error: %s", self.client_addr, e)
            self.h2.protocol_error(e)
            self._close_now()
            return
        streams = self.streams
        for ev in events:
            if isinstance(ev, DataReceived):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_data(ev.data, ev.flow_controlled_length)
                else:
                    self.h2.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, RequestReceived):
                self._request(ev)
            elif isinstance(ev, StreamEnded):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_end()
            elif isinstance(ev, WindowUpdated):
                if ev.stream_id:
                    stream = streams.get(ev.stream_id)
                    if stream is not None:
                        self.pump(stream)
                else:
                    self._pump_all()
            elif isinstance(ev, StreamReset):
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.on_reset()
            elif isinstance(ev, RemoteSettingsChanged):
                self._pump_all()
            elif isinstance(ev, ConnectionTerminated):
                self.draining = True
                for stream in list(streams.values()):
                    stream.on_reset()
                self._close_now()
                return
        self._schedule_write()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for stream in list(self.streams.values()):
            stream.on_reset()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            if stream.exchange is not None:
                stream.exchange.on_downstream_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            if stream.exchange is not None and not stream._paused_handler:
                stream.exchange.on_downstream_resume()

    # streams

    def _request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        if self.draining:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)
            return
        self.total_streams += 1
        if self.total_streams >= self.listener.http2.max_streams_per_connection:
            self.drain()  # enough for one connection: finish these, the client reconnects
        try:
            head = request_head(ev.headers or [], ev.stream_ended is not None)
        except (BadRequest, ValueError) as e:  # ValueError: a decoding slip, still one stream
            log.info("http2 %s: stream %d: %s", self.client_addr, sid, e)
            self.reset(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        listener = self.listener
        ctx = RequestContext(
            self.client_addr,
            self.client_port,
            listener.port,
            listener.scheme,
            head.method,
            head.target,
            "2.0",
            head.headers,
            head.host.decode("latin-1"),
        )
        ctx.tls = self.tls
        stream = H2Stream(self, sid, ctx)
        stream.expected = head.content_length
        self.streams[sid] = stream
        pipeline.start(stream, listener.hosts, ctx, head.host, head.content_length)

    def stream_over(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        stream.log()
        if self.draining and not self.streams:
            self._schedule_close()

    def reset(self, sid: int, code: ErrorCodes) -> None:
        with contextlib.suppress(ProtocolError):
            self.h2.conn.reset_stream(sid, code)
        self._schedule_write()

    def ack(self, sid: int, size: int) -> None:
        try:
            self.h2.conn.acknowledge_received_data(size, sid)
        except ProtocolError:
            return
        self._schedule_write()

    def pump(self, stream: H2Stream) -> None:
        """Send what the windows allow of ``stream``: its head, then body, then its end.

        HEADERS and DATA are framed here (the head by :func:`encode_response`) and queued
        behind whatever ``h2`` has queued, so the order on the wire is kept; ``h2`` is told
        only what its bookkeeping needs: the stream's state and the flow-control windows.
        Going through ``h2.send_headers``/``send_data`` cost more than all the rest of a small
        proxied request, and made a large download about twice as slow as over HTTP/1.1."""
        conn = self.h2.conn
        out = stream._out
        sid = stream.stream_id
        if self.closed or self.streams.get(sid) is not stream:
            return
        state = conn.streams.get(sid)
        if state is None or state.closed:
            stream._out.clear()
            self.stream_over(stream)
            return
        machine = state.state_machine
        frames: list[bytes | memoryview] = []
        done = False
        sent = 0
        try:
            head = stream._head
            if head is not None:
                stream._head = None
                end = stream._ending and not out and stream._trailers is None
                block = encode_response(head)
                if len(block) <= conn.max_outbound_frame_size:
                    flags = _END_HEADERS | _END_STREAM if end else _END_HEADERS
                    frames.append(_frame_head(len(block), _HEADERS, flags, sid))
                    frames.append(block)
                    machine.process_input(StreamInputs.SEND_HEADERS)
                    if end:
                        machine.process_input(StreamInputs.SEND_END_STREAM)
                else:
                    conn.send_headers(sid, head, end_stream=end)  # needs CONTINUATION frames
                done = end
            if out and not done:
                window = conn.local_flow_control_window(sid)
                frame = conn.max_outbound_frame_size
                last_ends = stream._ending and stream._trailers is None
                while out and window > 0:
                    data = out[0]
                    n = len(data)
                    if n > window or n > frame:
                        # Frames of a large chunk are views into it: re-slicing the rest after
                        # each 16 KiB frame would copy a 256 KiB read sixteen times over.
                        view = data if isinstance(data, memoryview) else memoryview(data)
                        n = min(window, frame)
                        out[0] = view[n:]
                        data = view[:n]
                        flags = 0
                    else:
                        out.popleft()
                        flags = _END_STREAM if last_ends and not out else 0
                    frames.append(_frame_head(n, _DATA, flags, sid))
                    frames.append(data)
                    window -= n
                    sent += n
                    if flags:
                        machine.process_input(StreamInputs.SEND_END_STREAM)
                        done = True
                conn.outbound_flow_control_window -= sent
                state.outbound_flow_control_window -= sent
                stream.buffered -= sent
            if stream._ending and not out and not done:
                if stream._trailers is not None:
                    self._emit(frames)
                    frames = []
                    conn.send_headers(sid, stream._trailers, end_stream=True)
                else:
                    # An early answer leaves the rest of an upload to be read and dropped
                    # (its DATA still acknowledged), which clients take better than a reset.
                    frames.append(_frame_head(0, _DATA, _END_STREAM, sid))
                    machine.process_input(StreamInputs.SEND_END_STREAM)
                done = True
        except ProtocolError:
            stream._out.clear()
            done = True
        self._emit(frames, sent)
        if done:
            self.stream_over(stream)
            return
        exchange = stream.exchange
        if exchange is not None:
            if stream.buffered > _HIGH_WATER and not stream._paused_handler:
                stream._paused_handler = True
                exchange.on_downstream_pause()
            elif stream._paused_handler and stream.buffered < _LOW_WATER:
                stream._paused_handler = False
                if not self.write_paused:
                    exchange.on_downstream_resume()

    def _emit(self, frames: list[bytes | memoryview], size: int = 0) -> None:
        """Queue frames made here, after those ``h2`` made before them. Small frames wait
        for the end of this turn of the loop, to leave together; ``size`` bytes of body or
        more leave now, so a download streams as it does over HTTP/1.1 rather than in bursts
        of everything read in one turn."""
        if frames:
            pending = self.h2.take()
            if pending:
                self._out.append(pending)
            self._out += frames
            if size >= _WRITE_NOW:
                self._write_now()
            else:
                self._schedule_write()

    def _pump_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream._out or stream._ending:
                self.pump(stream)

    # writing and closing

    def _schedule_write(self) -> None:
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self._loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._flush_handle = None
        data = self.h2.take()
        out = self._out
        if data:
            out.append(data)
        if out:
            self._out = []
            if self.transport is not None and not self.closed:
                # One buffer: a TLS transport makes a record of each piece it is given, and
                # a record per 9-byte frame header costs more than this copy.
                self.transport.write(b"".join(out))

    def _close_now(self) -> None:
        self._write_now()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _schedule_close(self) -> None:
        self._loop.call_soon(self._close_now)

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY now, close once the streams in flight are done."""
        if self.draining or self.closed:
            return
        self.draining = True
        # Framed here rather than by h2.close_connection(), which would stop h2 from sending
        # anything more, and the streams in flight are still to be answered.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.h2.conn.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self._write_now()
        if self.transport is not None:
            self.transport.write(goaway.serialize())
        if not self.streams:
            self._schedule_close()

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self.closed:
            return
        timeout = self.listener.http2.idle_timeout
        body_timeout = self.listener.limits.client_body_timeout
        idle = self._loop.time() - self._last_active
        if self.streams and idle >= body_timeout:
            # Nothing received for that long while requests wait for their bodies: the
            # HTTP/2 form of a slow-loris. Those streams get 408 (or a reset once answered).
            for stream in list(self.streams.values()):
                if not stream.request_done:
                    stream.ctx.error = "the request body was not received in time"
                    exchange, stream.exchange = stream.exchange, None
                    if exchange is not None:
                        exchange.on_downstream_lost()
                    stream.error(408, "the request body was not received in time")
        if not self.streams and idle >= timeout:
            self.drain()
            return
        wait = body_timeout - idle if self.streams else min(timeout - idle, body_timeout)
        self._idle_timer = self._loop.call_later(max(wait, 0.25), self._on_idle)
