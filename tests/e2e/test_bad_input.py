"""Malformed and ambiguous requests: each gets the right status and nothing reaches upstream.

The upstream here is a bare TCP listener that records every byte it receives, so a request
that slipped through in any form would show up there.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.support.procs import Proc, free_port


class Sentinel:
    """A TCP server that accepts connections and keeps whatever it is sent."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = bytearray()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def proxy(request: pytest.FixtureRequest) -> Iterator[tuple[int, Sentinel]]:
    from tests.support.procs import start_ferryman

    sentinel = Sentinel()
    port = free_port()
    config = f"""
workers: 1
limits:
  max_request_line: 1k
  max_header_size: 4k
  max_headers: 20
  max_body_size: 1k
  client_header_timeout: 2s
upstreams:
  sink:
    servers: [{{address: "127.0.0.1:{sentinel.port}"}}]
servers:
  - listen: ["127.0.0.1:{port}"]
    default: true
    routes:
      - path: /
        proxy: {{upstream: sink}}
"""
    proc: Proc = start_ferryman(config, ("127.0.0.1", port))
    yield port, sentinel
    proc.stop()
    sentinel.close()


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


H = b"Host: example.test\r\n"
BIG = b"x" * 5000

CASES: list[tuple[str, bytes, int]] = [
    (
        "CL and TE together",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE and CL together",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "differing Content-Length",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    (
        "repeated Content-Length",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    ),
    ("Content-Length list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    ("negative Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("signed Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("hex Content-Length", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    (
        "TE not ending in chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n",
        501,
    ),
    (
        "TE chunked then gzip",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "TE twice",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "space before colon",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE in HTTP/1.0",
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    (
        "obs-fold on TE",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("bare LF request line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("bare LF header", b"GET / HTTP/1.1\r\nHost: example.test\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: example.test\rX: y\r\n\r\n", 400),
    ("no colon", b"GET / HTTP/1.1\r\n" + H + b"Nocolon\r\n\r\n", 400),
    ("space in name", b"GET / HTTP/1.1\r\n" + H + b"X Y: z\r\n\r\n", 400),
    ("NUL in value", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
    ("missing Host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("bad method", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    (
        "bad chunk size",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk size bare LF",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        400,
    ),
    ("unknown expectation", b"GET / HTTP/1.1\r\n" + H + b"Expect: magic\r\n\r\n", 417),
    ("request line too long", b"GET /" + BIG + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    ("header too large", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + BIG + b"\r\n\r\n", 431),
    (
        "too many headers",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n",
        431,
    ),
    ("body over the limit", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5000\r\n\r\n", 413),
    (
        "chunked body over the limit",
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n1388\r\n"
        + BIG
        + b"\r\n0\r\n\r\n",
        413,
    ),
    ("HTTP/2.0 in an HTTP/1 line", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400),
    (
        "upgrade with a body",
        b"POST / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: 5\r\n\r\nGET /",
        400,
    ),
    (
        "gzip then chunked",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    ("CONNECT to a reverse proxy", b"CONNECT example.test:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
]


@pytest.mark.parametrize(("name", "raw", "status"), CASES, ids=[c[0] for c in CASES])
def test_rejected_and_never_forwarded(
    proxy: tuple[int, Sentinel], name: str, raw: bytes, status: int
) -> None:
    port, sentinel = proxy
    out = exchange(port, raw)
    assert out.startswith(b"HTTP/1.1 %d " % status), (name, out[:200])
    assert b"connection: close" in out.lower()
    assert bytes(sentinel.received) == b"", (name, bytes(sentinel.received[:200]))


def test_many_cases(proxy: tuple[int, Sentinel]) -> None:
    assert len(CASES) >= 25


def test_slow_head_times_out(proxy: tuple[int, Sentinel]) -> None:
    port, sentinel = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 408 ")
    assert bytes(sentinel.received) == b""


def test_valid_request_after_all_still_works(
    proxy: tuple[int, Sentinel], origin: Callable[..., Proc]
) -> None:
    # The sentinel answers nothing; a well-formed request does reach it.
    port, sentinel = proxy
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /fine HTTP/1.1\r\nHost: example.test\r\n\r\n")
        s.settimeout(1)
        with contextlib.suppress(TimeoutError):
            s.recv(100)
    assert b"GET /fine HTTP/1.1" in bytes(sentinel.received)
