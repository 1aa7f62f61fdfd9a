"""HTTP/2 toward clients on the ``h2`` state machine, with Ferryman's limits; no sockets.

Theory of operation. :class:`ServerH2` wraps one ``h2`` server connection. Bytes go in through
:meth:`ServerH2.receive`, events come out, and frames to send collect inside until
:meth:`ServerH2.take` hands them over. The wrapper adds what ``h2`` leaves to its caller:

* Abuse limits with bounded work per read. Client RST_STREAMs (rapid reset, CVE-2023-44487)
  and control frames (SETTINGS, PING, PRIORITY) are counted per one-second window; past the
  limit :class:`Abuse` is raised and the caller sends GOAWAY ENHANCE_YOUR_CALM and closes.
  ``h2`` itself bounds a header block to 64 CONTINUATION frames and the decoded list to
  SETTINGS_MAX_HEADER_LIST_SIZE, which turns CONTINUATION floods and HPACK bombs into
  errors; both close the connection too.
* Translation of a request's header block into what the pipeline wants (method, target,
  host, an HTTP/1-shaped header list with ``host`` and joined cookies), and of a response's
  headers into a block without the connection-specific fields HTTP/2 forbids.
"""

from __future__ import annotations

import contextlib
import re

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    Event,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
)
from h2.exceptions import DenialOfServiceError, ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes
from h2.stream import StreamInputs
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.frame import Frame, HeadersFrame

from ferryman.http.headers import HOP_BY_HOP, HeaderList, strip_hop_by_hop

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Abuse(Exception):
    """The client broke a limit meant to bound its cost; close with ENHANCE_YOUR_CALM."""


class BadRequest(Exception):
    """A request head that cannot be served (a missing pseudo-header, ...): reset the stream."""


class Limits:
    __slots__ = (
        "connection_window",
        "initial_window",
        "max_concurrent_streams",
        "max_control_per_second",
        "max_frame_size",
        "max_header_list_size",
        "max_resets_per_second",
    )

    def __init__(
        self,
        max_concurrent_streams: int = 128,
        max_header_list_size: int = 65536,
        initial_window: int = 1 << 20,
        connection_window: int = 16 << 20,
        max_frame_size: int = 16384,
        max_resets_per_second: int = 200,
        max_control_per_second: int = 200,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.initial_window = initial_window
        self.connection_window = connection_window
        self.max_frame_size = max_frame_size
        self.max_resets_per_second = max_resets_per_second
        self.max_control_per_second = max_control_per_second


# Header validation is done by :func:`request_head` in one pass (h2's own costs more than the
# rest of a request); response headers come from :func:`response_block`, already clean.
_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class _Connection(H2Connection):
    # How many closed streams h2 remembers (to tell a late frame from a bad one): its default
    # of 65,536 is several MB on one long-lived connection; a few round trips' worth will do.
    MAX_CLOSED_STREAMS = 1024

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        # A body's length against content-length is checked per stream by the server (a
        # stream error); h2's own check would end the whole connection. The fast path in
        # ``ServerH2._request`` never sets it; this is the same for heads h2 reads itself.
        frames, events = super()._receive_headers_frame(frame)
        stream = self.streams.get(frame.stream_id)
        if stream is not None:
            stream._expected_content_length = None
        return frames, events


class ServerH2:
    __slots__ = ("_buf", "_control", "_framing", "_resets", "_window_start", "conn", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.conn: H2Connection = _Connection(config=_CONFIG)
        # Effective at once, not only after the client's SETTINGS ACK: a client that never
        # acknowledges must not get the library's more generous defaults meanwhile.
        self.conn.decoder.max_header_list_size = limits.max_header_list_size
        self._window_start = 0.0
        self._resets = 0
        self._control = 0
        # Once the client preface is read, frames are split here (see ``_frames``).
        self._framing = False
        self._buf = bytearray()

    def initiate(self) -> None:
        conn = self.conn
        conn.local_settings.max_concurrent_streams = self.limits.max_concurrent_streams
        conn.initiate_connection()
        conn.update_settings(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_list_size,
                SettingCodes.INITIAL_WINDOW_SIZE: self.limits.initial_window,
                SettingCodes.MAX_FRAME_SIZE: self.limits.max_frame_size,
                SettingCodes.ENABLE_PUSH: 0,
            }
        )
        extra = self.limits.connection_window - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes; the events. Raises :class:`Abuse` or ``h2``'s ``ProtocolError``."""
        if self._framing:
            events = self._frames(data)
        else:
            conn = self.conn
            events = conn.receive_data(data)
            pending = conn.incoming_buffer
            self._framing = not (pending._preamble_len or pending._data or pending._headers_buffer)
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._resets = self._control = 0
        limits = self.limits
        for ev in events:
            if isinstance(ev, StreamReset):
                if ev.remote_reset:
                    self._resets += 1
                    if self._resets > limits.max_resets_per_second:
                        raise Abuse("too many stream resets (rapid reset)")
            elif isinstance(ev, PingReceived | RemoteSettingsChanged | PriorityUpdated):
                self._control += 1
                if self._control > limits.max_control_per_second:
                    raise Abuse("too many control frames (SETTINGS/PING/PRIORITY flood)")
        return events

    def _frames(self, data: bytes) -> list[Event]:
        """Split whole frames out of the input. A request's HEADERS frame (a new stream, the
        whole block in one frame) is handled here; every other frame goes to ``h2`` as is,
        in order. h2's own path for a request head costs several times its HPACK decoding,
        and it copies the rest of its buffer after each frame it takes."""
        buf = self._buf
        buf += data
        conn = self.conn
        events: list[Event] = []
        size = len(buf)
        pos = 0
        slow = -1  # start of a run of frames for h2
        limit = conn.max_inbound_frame_size
        while size - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if length > limit:
                slow = pos if slow < 0 else slow
                pos = size  # h2 refuses the frame from its header
                break
            end = pos + 9 + length
            if end > size:
                break
            # HEADERS with END_HEADERS, neither PADDED nor PRIORITY, opening a new stream.
            if buf[pos + 3] == 1 and buf[pos + 4] & 0x2C == 0x04:
                sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                if sid & 1 and sid > conn.highest_inbound_stream_id:
                    if slow >= 0:
                        events += conn.receive_data(bytes(buf[slow:pos]))
                        slow = -1
                    # Checked again: the frames just passed on may have opened this stream
                    # (these are then its trailers), or begun a header block.
                    if (
                        sid > conn.highest_inbound_stream_id
                        and not conn.incoming_buffer._headers_buffer
                    ):
                        events += self._request(sid, bytes(buf[pos + 9 : end]), buf[pos + 4] & 1)
                        pos = end
                        continue
            if slow < 0:
                slow = pos
            pos = end
        if slow >= 0:
            events += conn.receive_data(bytes(buf[slow:pos]))
        del buf[:pos]
        return events

    def _request(self, sid: int, block: bytes, end_stream: int) -> list[Event]:
        """What ``h2`` does for a HEADERS frame that opens a stream, step for step."""
        conn = self.conn
        if conn.open_inbound_streams + 1 > conn.local_settings.max_concurrent_streams:
            raise TooManyStreamsError("too many concurrent streams")
        try:
            headers = conn.decoder.decode(block, raw=True)
        except OversizedHeaderListError as e:
            raise DenialOfServiceError(f"oversized header block: {e}") from e
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"error decoding a header block: {e}") from e
        conn.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = conn._begin_new_stream(sid, AllowedStreamIDs.ODD)
        events = stream.state_machine.process_input(StreamInputs.RECV_HEADERS)
        head = events[0]
        assert isinstance(head, RequestReceived)
        head.headers = headers  # type: ignore[assignment]  # a list; typed as an iterable
        if end_stream:
            ended = stream.state_machine.process_input(StreamInputs.RECV_END_STREAM)
            head.stream_ended = ended[0]  # type: ignore[assignment]
            events += ended
        # The body's length against content-length is checked per stream by the server
        # (a stream error); h2's own check would end the whole connection.
        return events

    def take(self) -> bytes:
        return self.conn.data_to_send()

    def calm_down(self) -> None:
        self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)

    def protocol_error(self, exc: ProtocolError) -> None:
        code = getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
        # The library may have closed the connection on its side already.
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(code)


class RequestHead:
    __slots__ = ("content_length", "headers", "host", "method", "scheme", "target")

    def __init__(
        self,
        method: str,
        scheme: bytes,
        target: bytes,
        host: bytes,
        headers: HeaderList,
        content_length: int | None,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.target = target
        self.host = host
        self.headers = headers
        self.content_length = content_length


# RFC 9113 8.2.1: lower-case tokens only; values without CR, LF or NUL, and without
# leading or trailing whitespace. Anything else could split a request on an HTTP/1.1 upstream.
# Other controls (but HTAB) are refused too, as the HTTP/1.1 parser refuses them (RFC 9110 5.5).
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|^[ \t]|[ \t]$")
# What each pseudo-header may be, checked before anything goes into an HTTP/1.1 request line:
# a method is a token (RFC 9110 9.1); a path is origin-form, no space, control or DEL;
# an authority is host[:port] with no userinfo (RFC 9113 8.3.1); a scheme is a URI scheme.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(rb"/[^\x00-\x20\x7f]*")
_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+\-.]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_PSEUDO = frozenset({b":method", b":path", b":scheme", b":authority", b":protocol"})
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)


def request_head(block: list[tuple[bytes, bytes]], ends_stream: bool) -> RequestHead:
    """An HTTP/2 request header block as the pipeline's request head (RFC 9113 8.3.1).

    Everything that would reach an HTTP/1.1 upstream is checked here; a block that fails
    raises :class:`BadRequest` (the stream is reset), never anything else."""
    pseudo: dict[bytes, bytes] = {}
    headers: HeaderList = []
    cookies: list[bytes] = []
    host: bytes | None = None
    content_length: int | None = None
    for name, value in block:
        if _BAD_VALUE.search(value) is not None:
            raise BadRequest(f"invalid characters in the value of {name!r}")
        if name[:1] == b":":
            if headers or cookies:
                raise BadRequest(f"pseudo-header {name!r} after regular ones (RFC 9113 8.3)")
            if name not in _PSEUDO:
                raise BadRequest(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise BadRequest(f"repeated pseudo-header {name!r}")
            pseudo[name] = value
            continue
        if not name or _BAD_NAME.search(name) is not None:
            raise BadRequest(f"invalid header name {name!r}")
        if name in _CONNECTION_SPECIFIC and (name != b"te" or value != b"trailers"):
            raise BadRequest(f"connection-specific header {name!r} (RFC 9113 8.2.2)")
        if name == b"cookie":
            cookies.append(value)  # split into crumbs by HPACK; HTTP/1.1 wants one line
            continue
        if name == b"host":
            if host is not None:
                raise BadRequest("repeated host header")
            host = value
        elif name == b"content-length":
            if _DIGITS.fullmatch(value) is None:
                raise BadRequest("invalid content-length")
            length = int(value)
            if content_length is not None and length != content_length:
                raise BadRequest("conflicting content-length headers")
            content_length = length
        headers.append((name, value))
    method = pseudo.get(b":method")
    if method is None or _METHOD.fullmatch(method) is None:
        raise BadRequest("no valid :method")
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not served over HTTP/2")
    path = pseudo.get(b":path")
    scheme = pseudo.get(b":scheme")
    if path is None or scheme is None or _SCHEME.fullmatch(scheme) is None:
        raise BadRequest("no valid :path or :scheme")
    if _PATH.fullmatch(path) is None and not (path == b"*" and method == b"OPTIONS"):
        raise BadRequest("a :path not in origin form")
    authority = pseudo.get(b":authority")
    host = authority or host
    if not host:
        raise BadRequest("no :authority or host")
    if _AUTHORITY.fullmatch(host) is None:
        raise BadRequest(f"invalid authority {host!r}")
    if ends_stream and content_length:
        # RFC 9113 8.1.1: the body must be as long as content-length says; passed on, the
        # declared length would take bytes of the next request on an HTTP/1.1 upstream.
        raise BadRequest("content-length with no body")
    if authority is not None:
        headers = [(k, v) for k, v in headers if k != b"host"]
    headers.insert(0, (b"host", host))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if content_length is None and not ends_stream:
        # A body of unknown length: HTTP/1.1 upstreams get it chunked.
        headers.append((b"transfer-encoding", b"chunked"))
    return RequestHead(method.decode("ascii"), scheme, path, host, headers, content_length)


_DROP = HOP_BY_HOP | {b"host"}


def response_block(status: int, headers: HeaderList) -> HeaderList:
    """A response head for HTTP/2: ``:status`` first, connection-specific fields gone."""
    out: HeaderList = [(b":status", b"%d" % status)]
    out += strip_hop_by_hop([(k.lower(), v) for k, v in headers], _DROP)
    return out


# HPACK (RFC 7541) for response heads, written here because the library's encoder is the
# largest cost of a small response. Fields are sent as literals *without indexing*, so the
# encoder's dynamic table, which ``h2`` still uses for trailers, is never out of step with the
# client's decoder; a status in the static table is one byte.
_STATUS = {200: 0x88, 204: 0x89, 206: 0x8A, 304: 0x8B, 400: 0x8C, 404: 0x8D, 500: 0x8E}
_NAME_INDEX = {
    b"accept-ranges": 18,
    b"age": 21,
    b"cache-control": 24,
    b"content-encoding": 26,
    b"content-language": 27,
    b"content-length": 28,
    b"content-range": 30,
    b"content-type": 31,
    b"date": 33,
    b"etag": 34,
    b"expires": 36,
    b"last-modified": 44,
    b"location": 46,
    b"server": 54,
    b"set-cookie": 55,
    b"strict-transport-security": 56,
    b"vary": 59,
}


def _integer(value: int, prefix: int, first: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(127)]  # a 7-bit-prefix length below 127 is one byte
_name_prefix: dict[bytes, bytes] = {}  # name -> its encoded representation, for names seen


def _name(name: bytes) -> bytes:
    prefix = _name_prefix.get(name)
    if prefix is None:
        index = _NAME_INDEX.get(name)
        if index is not None:
            prefix = _integer(index, 4, 0)
        else:
            prefix = b"\x00" + _integer(len(name), 7, 0) + name
        if len(_name_prefix) < 512:  # names come from config and upstreams: few, but bounded
            _name_prefix[name] = prefix
    return prefix


def encode_response(block: HeaderList) -> bytes:
    """An HPACK header block for ``response_block``'s output."""
    parts: list[bytes] = []
    append = parts.append
    for name, value in block:
        if name == b":status":
            one = _STATUS.get(int(value))
            if one is not None:
                append(bytes((one,)))
                continue
            append(b"\x08")  # literal without indexing, name = static entry 8
        else:
            append(_name_prefix.get(name) or _name(name))
        n = len(value)
        append(_SMALL[n] if n < 127 else _integer(n, 7, 0))
        append(value)
    return b"".join(parts)
