"""HTTP/2 abuse: each attack is sent as raw frames; Ferryman must close the connection after
bounded work, measured as the worker's CPU time and resident memory from /proc, and go on
serving other clients."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator

import hpack
import httpx
import pytest

from tests.support.procs import Proc, free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4
ENHANCE_YOUR_CALM = 0xB

# What one attack may cost the worker at most. A connection that is closed early costs a few
# milliseconds; the bounds leave room for a slow CI machine, not for unbounded work.
CPU_LIMIT = 1.0  # seconds
RSS_LIMIT = 30 << 20  # bytes


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def request_block(path: str = "/", extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", path)]
    return hpack.Encoder().encode(headers + (extra or []))


class Usage:
    """CPU seconds and resident bytes of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0


class Attack:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.received = b""

    def send(self, data: bytes) -> bool:
        """False once Ferryman has closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def drain(self, seconds: float = 2.0) -> bool:
        """Read until the server closes; True if it did within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.received += data
        return False

    def goaway_code(self) -> int | None:
        buf = self.received
        i = 0
        while i + 9 <= len(buf):
            n = int.from_bytes(buf[i : i + 3], "big")
            if buf[i + 3] == GOAWAY and i + 9 + 8 <= len(buf):
                return int.from_bytes(buf[i + 13 : i + 17], "big")
            i += 9 + n
        return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def target(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> Iterator[tuple[int, Proc]]:
    origin_port = free_port()
    origin(origin_port, "app")
    port = free_port()
    proc = ferryman(
        f"""
workers: 1
log: {{access: {{enabled: false}}}}
http2: {{h2c: true}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /
        proxy: {{url: "http://127.0.0.1:{origin_port}"}}
      - path: /fixed
        respond: {{body: ok}}
""",
        port,
    )
    yield port, proc
    # Whatever the attack did, the server still answers a polite client.
    r = httpx.get(f"http://127.0.0.1:{port}/fixed")
    assert r.text == "ok"


def _measure(proc: Proc, attack: Callable[[], Attack]) -> tuple[Attack, float, int]:
    usage = Usage(proc.pid)
    cpu0, rss0 = usage.cpu(), usage.rss()
    a = attack()
    closed = a.drain()
    a.close()  # what was received stays in ``a.received``
    assert closed, "the connection was not closed"
    time.sleep(0.1)
    return a, usage.cpu() - cpu0, usage.rss() - rss0


def test_rapid_reset(target: tuple[int, Proc]) -> None:
    port, proc = target

    def attack() -> Attack:
        a = Attack(port)
        block = request_block("/slow?delay=5")
        sid = 1
        for _ in range(100):  # up to 10,000 streams opened and cancelled at once
            batch = b"".join(
                frame(HEADERS, END_HEADERS | END_STREAM, s, block)
                + frame(RST_STREAM, 0, s, struct.pack(">L", 8))
                for s in range(sid, sid + 200, 2)
            )
            sid += 200
            if not a.send(batch):
                break
        return a

    a, cpu, rss = _measure(proc, attack)
    assert a.goaway_code() == ENHANCE_YOUR_CALM
    print(f"rapid reset: cpu {cpu:.3f}s rss {rss / 1e6:+.1f}MB")
    assert cpu < CPU_LIMIT and rss < RSS_LIMIT


def test_continuation_flood(target: tuple[int, Proc]) -> None:
    port, proc = target

    def attack() -> Attack:
        a = Attack(port)
        a.send(frame(HEADERS, END_STREAM, 1, request_block()))
        junk = frame(CONTINUATION, 0, 1, b"\x40\x01x\x01y" * 3000)  # literal x: y, never ending
        for _ in range(10_000):
            if not a.send(junk):
                break
        return a

    a, cpu, rss = _measure(proc, attack)
    assert a.goaway_code() is not None  # h2 allows 64 CONTINUATIONs, then it is an error
    print(f"continuation flood: cpu {cpu:.3f}s rss {rss / 1e6:+.1f}MB")
    assert cpu < CPU_LIMIT and rss < RSS_LIMIT


def test_oversized_header_list(target: tuple[int, Proc]) -> None:
    port, proc = target

    def attack() -> Attack:
        a = Attack(port)
        block = request_block("/", [("x-big", "v" * 200_000)])
        chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
        data = frame(HEADERS, END_STREAM, 1, chunks[0])
        for i, c in enumerate(chunks[1:], 1):
            data += frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0, 1, c)
        a.send(data)
        return a

    a, cpu, rss = _measure(proc, attack)
    assert a.goaway_code() is not None
    assert cpu < CPU_LIMIT and rss < RSS_LIMIT


@pytest.mark.parametrize("kind", [PING, SETTINGS])
def test_control_frame_flood(target: tuple[int, Proc], kind: int) -> None:
    port, proc = target
    one = frame(PING, 0, 0, b"12345678") if kind == PING else frame(SETTINGS, 0, 0)

    def attack() -> Attack:
        a = Attack(port)
        for _ in range(200):  # up to 100,000 frames, each asking for an ACK
            if not a.send(one * 500):
                break
        return a

    a, cpu, rss = _measure(proc, attack)
    assert a.goaway_code() == ENHANCE_YOUR_CALM
    print(f"{'PING' if kind == PING else 'SETTINGS'} flood: cpu {cpu:.3f}s rss {rss / 1e6:+.1f}MB")
    assert cpu < CPU_LIMIT and rss < RSS_LIMIT


def test_polite_client_unaffected(target: tuple[int, Proc]) -> None:
    port, _ = target
    with httpx.Client(http1=False, http2=True) as c:
        for _ in range(300):  # more streams than any per-second limit, none reset
            assert c.get(f"http://127.0.0.1:{port}/fixed").text == "ok"


def test_stalled_request_bodies_time_out(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    origin_port = free_port()
    origin(origin_port, "app")
    port = free_port()
    ferryman(
        f"""
workers: 1
http2: {{h2c: true}}
limits: {{client_body_timeout: 1s, client_header_timeout: 1s}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /
        proxy: {{url: "http://127.0.0.1:{origin_port}"}}
""",
        port,
    )
    a = Attack(port)
    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/up"),
         ("content-length", "1000")]
    )  # fmt: skip
    # Ten uploads that never send their bodies: each is answered 408 once the body timeout
    # passes with nothing received, rather than held open forever.
    a.send(b"".join(frame(HEADERS, END_HEADERS, s, block) for s in range(1, 21, 2)))
    a.drain(2.5)  # well under the default body timeout of 60s: the configured 1s applied
    decoder = hpack.Decoder()
    statuses = []
    buf, i = a.received, 0
    while i + 9 <= len(buf):
        n = int.from_bytes(buf[i : i + 3], "big")
        if buf[i + 3] == HEADERS:
            statuses.append(dict(decoder.decode(buf[i + 9 : i + 9 + n]))[":status"])
        i += 9 + n
    assert statuses == ["408"] * 10
    a.close()
    # One byte that may begin the HTTP/2 preface, then nothing: closed like a slow head.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"P")
        s.settimeout(3)
        assert s.recv(10) == b""
