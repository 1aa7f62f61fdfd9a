"""HTTP/2 requests that must not reach an HTTP/1.1 upstream as they are: malformed heads and
bodies that disagree with their content-length are refused per stream (RFC 9113 8.1.1 and
8.3), the connection goes on serving, and flow control never leaks a window."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import hpack
import pytest

from ferryman.http.h2conn import BadRequest, request_head
from tests.support.procs import Proc, free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_STREAM, END_HEADERS, PRIORITY = 0x1, 0x4, 0x20
PROTOCOL_ERROR = 0x1

Block = list[tuple[bytes, bytes]]


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


GET: Block = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]


def block(*changes: tuple[bytes, bytes], drop: tuple[bytes, ...] = ()) -> Block:
    """GET's block with ``drop`` names removed and ``changes`` replacing or added after."""
    names = {n for n, _ in changes} | set(drop)
    return [(n, v) for n, v in GET if n not in names] + list(changes)


# Unit: what request_head refuses and accepts.


@pytest.mark.parametrize(
    ("headers", "ends_stream"),
    [
        (block((b"content-length", b"60")), True),  # declared, no body will come
        (block((b"content-length", b"+5")), False),
        (block((b"content-length", b"5"), (b"content-length", b"6")), False),
        (block((b":method", b"GET /admin")), True),
        (block((b":method", b"G\xc3\xa9T")), True),
        (block((b":method", b"")), True),
        (block((b":path", b"/a b")), True),
        (block((b":path", b"/a\tb")), True),
        (block((b":path", b"a")), True),
        (block((b":path", b"*")), True),  # only for OPTIONS
        (block((b":path", b"")), True),
        (block((b"", b"x")), True),
        (block((b"x-c", b"a\x01\x7fb")), True),
        (block((b"x-c", b"a\rb")), True),
        (block((b":path", b"http://evil/x")), True),
        (block((b"x:y", b"z")), True),
        (block((b"te", b"trailers, gzip")), True),
        (block((b"x y", b"x")), True),
        (block((b":authority", b"a.test evil@x")), True),
        (block((b":authority", b"user@a.test")), True),
        (block((b":authority", b"a.test/x")), True),
        (block((b"host", b"a"), (b"host", b"b"), drop=(b":authority",)), True),
        (block((b"host", b"a b"), drop=(b":authority",)), True),
        ([*GET, (b":method", b"POST")], True),  # a repeated pseudo-header
        ([*GET[:3], (b"x", b"y"), GET[3]], True),  # a pseudo-header after a regular one
        ([*GET[:3], (b"cookie", b"a=b"), GET[3]], True),
        (block((b":scheme", b"ht tp")), True),
        (block(drop=(b":method",)), True),
        (block(drop=(b":authority",)), True),
    ],
)
def test_request_heads_refused(headers: Block, ends_stream: bool) -> None:
    with pytest.raises(BadRequest):
        request_head(headers, ends_stream)


def test_request_heads_accepted() -> None:
    head = request_head(block((b":authority", b"a.test:8443")), True)
    assert (head.method, head.target, head.host) == ("GET", b"/", b"a.test:8443")
    head = request_head(block((b":authority", b"[::1]:80")), True)
    assert head.host == b"[::1]:80"
    head = request_head(block((b":method", b"OPTIONS"), (b":path", b"*")), True)
    assert head.target == b"*"
    head = request_head(block((b"host", b"h.test"), drop=(b":authority",)), True)
    assert head.headers[0] == (b"host", b"h.test")
    head = request_head(block((b"x-tab", b"a\tb"), (b"x-utf8", "é".encode())), True)
    assert (b"x-tab", b"a\tb") in head.headers
    head = request_head(block((b":method", b"POST"), (b"content-length", b"0")), True)
    assert head.content_length == 0
    head = request_head(block((b":method", b"POST"), (b"content-length", b"60")), False)
    assert head.content_length == 60


# Against a running Ferryman, in raw frames.


class Client:
    made: list[Client] = []

    def __init__(self, port: int) -> None:
        Client.made.append(self)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.closed = False

    def headers(self, sid: int, headers: Block, end_stream: bool, priority: bool = False) -> None:
        payload = self.encoder.encode(headers)
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        if priority:  # as browsers send them: read by h2 itself, not the fast path
            flags |= PRIORITY
            payload = struct.pack(">LB", 0, 15) + payload
        self.sock.sendall(frame(HEADERS, flags, sid, payload))

    def data(self, sid: int, data: bytes, end_stream: bool) -> None:
        self.sock.sendall(frame(DATA, END_STREAM if end_stream else 0, sid, data))

    def wait(self, sid: int, seconds: float = 3.0) -> tuple[str, int]:
        """("reset", code) or ("status", status) of stream ``sid`` once it ends; ("closed",
        GOAWAY code or -1) when the connection goes; ("timeout", 0)."""
        deadline = time.monotonic() + seconds
        seen = 0
        status = 0
        while True:
            for kind, flags, stream, payload in self.frames[seen:]:
                if kind == GOAWAY:
                    return "closed", int.from_bytes(payload[4:8], "big")
                if stream != sid:
                    continue
                if kind == RST_STREAM:
                    return "reset", int.from_bytes(payload[:4], "big")
                if kind == HEADERS:
                    status = int(dict(self.decoder.decode(payload, raw=True))[b":status"])
                if flags & END_STREAM and kind in (HEADERS, DATA):
                    return "status", status
            seen = len(self.frames)
            if self.closed:
                return "closed", -1
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", 0
            self.sock.settimeout(left)
            try:
                got = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                got = b""
            if not got:
                self.closed = True
                continue
            self.buf += got
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                kind, flags = self.buf[3], self.buf[4]
                stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                self.frames.append((kind, flags, stream, self.buf[9 : 9 + n]))
                self.buf = self.buf[9 + n :]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def port(origin: Callable[..., Proc], ferryman: Callable[..., Proc]) -> Iterator[int]:
    origin_port = free_port()
    origin(origin_port, "app")
    port = free_port()
    ferryman(
        f"""
workers: 1
log: {{access: {{enabled: false}}}}
http2: {{h2c: true, connection_window_size: 65535, initial_window_size: 65535}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /small
        max_body_size: 1k
        proxy: {{url: "http://127.0.0.1:{origin_port}"}}
      - path: /
        proxy: {{url: "http://127.0.0.1:{origin_port}"}}
""",
        port,
    )
    yield port
    for c in Client.made:
        c.close()
    Client.made.clear()


def post(path: bytes, length: int) -> Block:
    return block((b":method", b"POST"), (b":path", path), (b"content-length", b"%d" % length))


@pytest.mark.parametrize("priority", [False, True])
def test_content_length_without_a_body_resets_the_stream(port: int, priority: bool) -> None:
    c = Client(port)
    c.headers(1, post(b"/ka/attacker", 60), end_stream=True, priority=priority)
    assert c.wait(1) == ("reset", PROTOCOL_ERROR)
    c.headers(3, GET, end_stream=True)  # the connection goes on
    assert c.wait(3) == ("status", 200)
    c.close()


@pytest.mark.parametrize("priority", [False, True])
def test_a_body_shorter_than_content_length_resets_the_stream(port: int, priority: bool) -> None:
    c = Client(port)
    c.headers(1, post(b"/up", 60), end_stream=False, priority=priority)
    c.data(1, b"x" * 10, end_stream=False)
    c.headers(1, [(b"x-trailer", b"1")], end_stream=True)  # ends without the other 50
    assert c.wait(1) == ("reset", PROTOCOL_ERROR)
    c.headers(3, post(b"/up", 60), end_stream=False, priority=priority)
    c.data(3, b"x" * 10, end_stream=True)
    assert c.wait(3) == ("reset", PROTOCOL_ERROR)
    c.headers(5, GET, end_stream=True)
    assert c.wait(5) == ("status", 200)
    c.close()


@pytest.mark.parametrize("priority", [False, True])
def test_a_body_longer_than_content_length_resets_only_the_stream(
    port: int, priority: bool
) -> None:
    c = Client(port)
    c.headers(1, post(b"/up", 5), end_stream=False, priority=priority)
    c.data(1, b"x" * 10, end_stream=True)
    assert c.wait(1) == ("reset", PROTOCOL_ERROR)
    c.headers(3, post(b"/up", 5), end_stream=False, priority=priority)
    c.data(3, b"x" * 5, end_stream=True)
    assert c.wait(3) == ("status", 200)
    c.close()


@pytest.mark.parametrize(
    "headers",
    [
        block((b":method", b"G\xc3\xa9T")),
        block((b":method", b"GET /admin")),
        block((b":path", b"/a b")),
        block((b":authority", b"a.test evil@x")),
        block((b"host", b"a"), (b"host", b"b"), drop=(b":authority",)),
        [*GET, (b":path", b"/other")],
        [*GET[:3], (b"x", b"y"), GET[3]],
    ],
)
def test_malformed_heads_reset_only_their_stream(port: int, headers: Block) -> None:
    c = Client(port)
    c.headers(1, headers, end_stream=True)
    assert c.wait(1) == ("reset", PROTOCOL_ERROR)
    c.headers(3, GET, end_stream=True)
    assert c.wait(3) == ("status", 200)
    c.close()


def test_refused_bodies_give_their_window_back(port: int) -> None:
    # Each upload crosses the route's 1k limit in its first DATA frame and is answered 413;
    # the bytes of that frame still count against the connection's 64k window, so unless
    # they are acknowledged the client soon cannot send anything at all.
    sock = Client(port).sock
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send()[len(PREFACE) :])  # the preface went already
    statuses = []
    for _ in range(12):
        sid = conn.get_next_available_stream_id()
        # No content-length, so the limit is found in the body, not in the head.
        conn.send_headers(sid, post(b"/small", 0)[:-1], end_stream=False)
        assert conn.local_flow_control_window(sid) >= 10000, "the connection window leaked"
        conn.send_data(sid, b"x" * 10000, end_stream=True)
        sock.sendall(conn.data_to_send())
        done = False
        while not done:
            got = sock.recv(65536)
            assert got
            for ev in conn.receive_data(got):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    statuses.append(int(dict(ev.headers)[b":status"]))
                if isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    done = done or ev.stream_id == sid
            sock.sendall(conn.data_to_send())
    assert statuses == [413] * 12


class FakeConnection:
    """What an H2Stream asks of its connection, recorded."""

    def __init__(self) -> None:
        self.acked = 0
        self.resets: list[int] = []
        self.over = 0

    def ack(self, sid: int, size: int) -> None:
        self.acked += size

    def reset(self, sid: int, code: int) -> None:
        self.resets.append(code)

    def stream_over(self, stream: object) -> None:
        self.over += 1

    def pump(self, stream: object) -> None:
        pass


@pytest.mark.parametrize("end", ["reset", "abort", "finish"])
def test_held_body_bytes_are_acknowledged_when_the_stream_ends(end: str) -> None:
    from ferryman.context import RequestContext
    from ferryman.server.h2stream import H2Stream

    conn = FakeConnection()
    ctx = RequestContext("127.0.0.1", 5000, 80, "http", "POST", b"/", "2.0", [], "a")
    stream = H2Stream(conn, 1, ctx)  # type: ignore[arg-type]
    stream.on_data(b"x" * 100, 100)
    assert conn.acked == 100
    stream.pause_reading()  # the handler cannot take more for now
    stream.on_data(b"x" * 300, 300)
    assert conn.acked == 100
    if end == "reset":
        stream.on_reset()
    elif end == "abort":
        stream.abort("gone")
    else:
        stream.finish()
        stream.on_data(b"x" * 50, 50)  # the rest of the upload, read and dropped
    assert conn.acked == (450 if end == "finish" else 400)


def test_trailers_in_the_same_read_as_a_prioritised_head() -> None:
    # A head h2 reads itself (PRIORITY flag), its body and its trailers in one read: the
    # trailers are not taken for a new stream's head.
    from ferryman.http.h2conn import PREFACE as SERVER_PREFACE
    from ferryman.http.h2conn import Limits, ServerH2

    server = ServerH2(Limits())
    server.initiate()
    server.take()
    server.receive(SERVER_PREFACE + frame(SETTINGS, 0, 0), 0.0)
    enc = hpack.Encoder()
    head = struct.pack(">LB", 0, 15) + enc.encode(post(b"/up", 10))
    trailers = enc.encode([(b"x-trailer", b"1")])
    events = server.receive(
        frame(HEADERS, END_HEADERS | PRIORITY, 1, head)
        + frame(DATA, 0, 1, b"x" * 10)
        + frame(HEADERS, END_HEADERS | END_STREAM, 1, trailers),
        0.0,
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "RequestReceived",
        "PriorityUpdated",
        "DataReceived",
        "TrailersReceived",
        "StreamEnded",
    ]
