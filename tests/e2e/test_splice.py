"""Response bodies spliced from the upstream socket to the client's, end to end.

The origin here is a raw socket server, so a test controls the bytes on the wire: bodies
with a pattern that shows any byte out of place, bytes after a body, a body cut short.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.procs import Proc, free_port


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from any shifted copy of themselves."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (size // 251 + 1))[:size]


class RawOrigin:
    """Answers ``GET /?size=N&seed=S`` with N pattern bytes on keep-alive connections.
    ``stray=1`` sends bytes after the body, ``cut=N`` closes after N body bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                target = head.split(b" ")[1].decode()
                q = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                size = int(q.get("size", "0"))
                body = pattern(size, int(q.get("seed", "0")))
                out = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                out += b"Content-Length: %d\r\n\r\n" % size
                if "cut" in q:
                    conn.sendall(out + body[: int(q["cut"])])
                    return
                if "stray" in q:
                    body += b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
                conn.sendall(out + body)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxied(ferryman: Callable[..., Proc]) -> Iterator[tuple[str, Proc, RawOrigin]]:
    raw = RawOrigin()
    port = free_port()
    f = ferryman(
        f"""
workers: 1
upstreams:
  app:
    keepalive: 8
    servers: [{{address: "127.0.0.1:{raw.port}"}}]
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /gzip/
        compression: {{types: [application/octet-stream], algorithms: [gzip]}}
        proxy: {{upstream: app}}
      - path: /here
        respond: {{status: 200, body: "here"}}
      - path: /
        proxy: {{upstream: app}}
""",
        port,
    )
    yield f"http://127.0.0.1:{port}", f, raw
    raw.close()


def read_chars(pid: int) -> int:
    """Bytes the process has taken in through read(2) and its kind (splice(2) not included)."""
    with open(f"/proc/{pid}/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar"))


def talk(base: str, data: bytes, half_close_after: float | None = None) -> bytes:
    """Send ``data`` on a raw connection (half-closing it after so many seconds when asked),
    and return all that comes back until the proxy closes."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if half_close_after is not None:
            time.sleep(half_close_after)
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(1 << 20):
            out += chunk
    return out


def test_bodies_of_every_size_arrive_whole_and_large_ones_skip_python(
    proxied: tuple[str, Proc, RawOrigin],
) -> None:
    base, f, _ = proxied
    sizes = [0, 1, 1500, 2000, 2047, 2048, 2049, 4096, 65536, 65537, 300_000, 3_000_000]
    with httpx.Client(base_url=base, timeout=10) as c:
        c.get("/warm?size=10")
        before = read_chars(f.pid)
        for seed, size in enumerate(sizes):
            r = c.get(f"/x?size={size}&seed={seed}")
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            assert r.content == pattern(size, seed), size
        # Python read the heads and the first bytes of each body, not the 3.4 MB of bodies.
        assert read_chars(f.pid) - before < 100_000


def test_body_filters_still_see_the_whole_body(proxied: tuple[str, Proc, RawOrigin]) -> None:
    base, f, _ = proxied
    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.get("/gzip/x?size=500000&seed=3", headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert r.content == pattern(500_000, 3)
        # The same route's filter leaves an uncompressed answer alone: that one is spliced.
        before = read_chars(f.pid)
        r = c.get("/gzip/y?size=2000000&seed=7", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in r.headers
        assert r.content == pattern(2_000_000, 7)
        assert read_chars(f.pid) - before < 100_000


def test_pipelined_large_responses_keep_their_order(proxied: tuple[str, Proc, RawOrigin]) -> None:
    base, _, _ = proxied
    sizes = [200_000, 5, 70_000, 1_200_000]
    reqs = b"".join(
        b"GET /p?size=%d&seed=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (n, i) for i, n in enumerate(sizes)
    )
    out = talk(base, reqs + b"GET /p?size=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for i, n in enumerate(sizes):
        head, out = out.split(b"\r\n\r\n", 1)
        assert b"content-length: %d" % n in head.lower()
        assert out[:n] == pattern(n, i), i
        out = out[n:]


def test_answers_made_at_once_wait_for_the_spliced_body_before_them(
    proxied: tuple[str, Proc, RawOrigin],
) -> None:
    # /here is answered by Ferryman in the same turn of the loop as the body before it ends,
    # while that body still waits in its pipe.
    base, _, _ = proxied
    big = b"GET /b?size=150000&seed=5 HTTP/1.1\r\nHost: x\r\n\r\n"
    here = b"GET /here HTTP/1.1\r\nHost: x\r\n\r\n"
    out = talk(base, big + here + big + here.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    for expected in (pattern(150_000, 5), b"here", pattern(150_000, 5), b"here"):
        head, out = out.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        assert out[: len(expected)] == expected
        out = out[len(expected) :]
    assert out == b""


def test_a_spliced_body_is_sent_whole_before_the_connection_closes(
    proxied: tuple[str, Proc, RawOrigin],
) -> None:
    base, _, _ = proxied
    out = talk(base, b"GET /c?size=90000&seed=6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.split(b"\r\n\r\n", 1)[1] == pattern(90_000, 6)


def test_a_client_that_half_closes_after_its_request_gets_the_whole_body(
    proxied: tuple[str, Proc, RawOrigin],
) -> None:
    base, _, _ = proxied
    for delay in (0.0, 0.001, 0.003):  # the FIN lands before, with or after the answer
        out = talk(base, b"GET /h?size=120000&seed=8 HTTP/1.1\r\nHost: x\r\n\r\n", delay)
        assert out.split(b"\r\n\r\n", 1)[1] == pattern(120_000, 8), delay
    # Requests pipelined before the half-close are all answered, then the connection closes.
    reqs = b"".join(b"GET /q?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in (80_000, 9))
    out = talk(base, reqs, 0.0)
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.endswith(pattern(9))


def test_a_slow_client_gets_every_byte_in_order(proxied: tuple[str, Proc, RawOrigin]) -> None:
    base, _, _ = proxied
    port = int(base.rsplit(":", 1)[1])
    size = 8_000_000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.sendall(b"GET /slow?size=%d&seed=9 HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        time.sleep(0.5)  # the proxy meets a full client socket and must hold the rest
        got = b""
        while len(got) < size + 40:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            if len(got) < 1_000_000:
                time.sleep(0.001)
    head, body = got.split(b"\r\n\r\n", 1)
    assert b"200 OK" in head
    assert body == pattern(size, 9)


def test_bytes_after_a_spliced_body_retire_the_upstream_connection(
    proxied: tuple[str, Proc, RawOrigin],
) -> None:
    base, _, raw = proxied
    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.get("/s?size=100000&stray=1&seed=4")
        assert r.content == pattern(100_000, 4)
        time.sleep(0.2)
        used = raw.connections
        for i in range(3):
            r = c.get(f"/after?size=3000&seed={i}")
            assert r.content == pattern(3000, i)  # never the stray "response"
    assert raw.connections == used + 1  # a fresh connection, kept for the three


def test_a_body_cut_short_by_the_upstream_is_not_passed_off_as_whole(
    proxied: tuple[str, Proc, RawOrigin],
) -> None:
    base, _, _ = proxied
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{base}/cut?size=1000000&cut=300000", timeout=10)
    r = httpx.get(f"{base}/after?size=70000&seed=2", timeout=10)
    assert r.content == pattern(70_000, 2)
