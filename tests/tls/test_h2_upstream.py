"""Responses from HTTP/2 upstreams (``protocol: h2c``) to HTTP/1.1 clients, and the upstream
connection's flow-control window when a client goes away."""

from __future__ import annotations

import socket
from collections.abc import Callable

from ferryman.http.h2conn import response_block
from ferryman.proxy.h2proxy import H2ProxyExchange, _request_headers
from tests.support.procs import Proc, free_port


def _read_response(sock: socket.socket) -> tuple[bytes, dict[bytes, bytes], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        assert got, f"closed early: {buf!r}"
        buf += got
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        assert name.lower() not in headers, f"repeated {name!r}"
        headers[name.lower()] = value.strip()
    return lines[0], headers, body


def test_an_h2c_upstreams_length_reaches_http1_clients(ferryman: Callable[..., Proc]) -> None:
    back = free_port()
    ferryman(
        f"""
workers: 1
http2: {{h2c: true}}
servers:
  - listen: ["127.0.0.1:{back}"]
    routes:
      - path: /
        respond: {{body: "hello there"}}
""",
        back,
    )
    front = free_port()
    ferryman(
        f"""
workers: 1
upstreams:
  h2back:
    protocol: h2c
    servers: [{{address: "127.0.0.1:{back}"}}]
servers:
  - listen: ["127.0.0.1:{front}"]
    routes:
      - path: /
        proxy: {{upstream: h2back}}
""",
        front,
    )
    with socket.create_connection(("127.0.0.1", front), timeout=5) as sock:
        for _ in range(2):  # the same kept-alive connection, twice
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, body = _read_response(sock)
            assert status.startswith(b"HTTP/1.1 200")
            assert b"transfer-encoding" not in headers
            assert headers[b"content-length"] == b"11"
            while len(body) < 11:
                body += sock.recv(65536)
            assert body == b"hello there"


class FakeUpstream:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def ack(self, sid: int, size: int) -> None:
        self.calls.append(("ack", size))

    def cancel(self, sid: int) -> None:
        self.calls.append(("cancel", sid))


def test_bytes_held_for_a_paused_client_are_acknowledged_when_it_goes() -> None:
    exchange = H2ProxyExchange.__new__(H2ProxyExchange)  # no route or peer needed here
    upstream = FakeUpstream()
    exchange._conn = upstream  # type: ignore[assignment]
    exchange._sid = 7
    exchange._done = False
    exchange._counted = False
    exchange._timer = None
    exchange._held = -1
    exchange.on_downstream_pause()
    exchange._held += 5000  # what on_h2_data counts while the client is paused
    exchange.on_downstream_lost()
    assert upstream.calls == [("ack", 5000), ("cancel", 7)]


def test_hop_by_hop_headers_and_those_connection_names_do_not_cross() -> None:
    request = [
        (b"host", b"a"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"1"),
        (b"expect", b"100-continue"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
    ]
    assert _request_headers(request) == [
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    # A filter may add headers in any case; HTTP/2 wants them in lower case, and a
    # Connection header names what goes with it whatever its own case.
    response = [(b"Content-Type", b"text/plain"), (b"Connection", b"X-Hop"), (b"x-hop", b"1")]
    assert response_block(200, response) == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
    ]
