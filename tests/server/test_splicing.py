"""The splice(2) relay on real loopback TCP sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator

import pytest

from ferryman.server import splicing

pytestmark = pytest.mark.skipif(not splicing.AVAILABLE, reason="splice(2) is Linux-only")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(upstream's end, our end of it, our end to the client, the client's end)."""
    up, src = tcp_pair()
    dst, client = tcp_pair()
    yield up, src, dst, client
    for s in (up, src, dst, client):
        s.close()


def arrive(sock: socket.socket, n: int) -> None:
    deadline = time.monotonic() + 5
    while splicing.waiting(sock.fileno()) < n:
        assert time.monotonic() < deadline
        time.sleep(0.001)


def drain(sock: socket.socket, n: int) -> bytes:
    sock.setblocking(True)
    sock.settimeout(5)
    out = b""
    while len(out) < n:
        out += sock.recv(n - len(out))
    sock.setblocking(False)
    return out


def relay(src: int, dst: int, first: list[bytes | memoryview], count: int) -> tuple[int, bytes]:
    pipe = splicing.take_pipe()
    assert pipe is not None
    taken = splicing.fill(pipe, first, src, count)
    return taken, splicing.drain(pipe, dst)


def test_first_bytes_then_the_counted_body_and_no_more(
    sockets: tuple[socket.socket, ...],
) -> None:
    up, src, dst, client = sockets
    up.sendall(b"B" * 100_000 + b"NEXT")
    arrive(src, 100_004)
    first: list[bytes | memoryview] = [b"head\r\n\r\n", memoryview(b"xyz")]
    taken, rest = relay(src.fileno(), dst.fileno(), first, 100_000)
    assert (taken, rest, first) == (100_000, b"", [])
    assert drain(client, 100_011) == b"head\r\n\r\nxyz" + b"B" * 100_000
    assert splicing.waiting(src.fileno()) == 4  # what follows the body stays for the reader


def test_takes_what_has_come_and_stops(sockets: tuple[socket.socket, ...]) -> None:
    up, src, dst, client = sockets
    up.sendall(b"C" * 5000)
    arrive(src, 5000)
    taken, rest = relay(src.fileno(), dst.fileno(), [], 80_000)
    assert (taken, rest) == (5000, b"")
    assert drain(client, 5000) == b"C" * 5000


def test_what_the_client_cannot_take_comes_back_in_order(
    sockets: tuple[socket.socket, ...],
) -> None:
    up, src, dst, client = sockets
    body = bytes(range(256)) * 16384  # 4 MiB: more than a loopback socket buffers
    up.setblocking(True)
    up.settimeout(5)
    returned = b""
    total = 0
    while total < len(body):
        up.sendall(body[total : total + 131072])
        arrive(src, 1)
        taken, rest = relay(src.fileno(), dst.fileno(), [], len(body) - total)
        total += taken
        returned += rest
        if rest:
            break
    assert rest, "the client never filled up"
    got = drain(client, total - len(returned))
    assert got + returned == body[:total]  # the kernel's share, then ours, make the body


def test_first_bytes_too_large_for_the_pipe_are_left_alone(
    sockets: tuple[socket.socket, ...],
) -> None:
    _, src, _, _ = sockets
    pipe = splicing.take_pipe()
    assert pipe is not None
    first: list[bytes | memoryview] = [b"x" * (4 << 20)]
    assert splicing.fill(pipe, first, src.fileno(), 10) == 0
    assert len(first) == 1 and pipe.queued == 0
    splicing.discard(pipe)


def test_a_pipe_whose_client_left_comes_back_empty(sockets: tuple[socket.socket, ...]) -> None:
    up, src, _, _ = sockets
    up.sendall(b"D" * 30_000)
    arrive(src, 30_000)
    pipe = splicing.take_pipe()
    assert pipe is not None
    assert splicing.fill(pipe, [b"head"], src.fileno(), 30_000) == 30_000
    splicing.discard(pipe)
    assert splicing.take_pipe() is pipe and pipe.queued == 0
    with pytest.raises(BlockingIOError):
        os.read(pipe.r, 1)  # nothing left in it for the next body
    splicing.discard(pipe)


def test_later_runs_once_the_loop_turn_is_over() -> None:
    ran: list[str] = []

    async def turn() -> None:
        loop = asyncio.get_running_loop()
        splicing.later(loop, lambda: ran.append("a"))
        splicing.later(loop, lambda: 1 / 0)  # logged; the others still run
        splicing.later(loop, lambda: ran.append("b"))
        assert ran == []
        await asyncio.sleep(0)
        assert ran == ["a", "b"]

    asyncio.run(turn())


def test_only_plain_sockets_are_spliced() -> None:
    class Transport:
        def __init__(self, extra: dict[str, object]) -> None:
            self.extra = extra

        def get_extra_info(self, name: str) -> object:
            return self.extra.get(name)

    a, b = tcp_pair()
    with a, b:
        assert splicing.socket_fd(Transport({"socket": a})) == a.fileno()  # type: ignore[arg-type]
        tls = Transport({"socket": a, "sslcontext": object()})
        assert splicing.socket_fd(tls) == -1  # type: ignore[arg-type]
        assert splicing.socket_fd(Transport({})) == -1  # type: ignore[arg-type]


def test_when_every_pipe_waits_the_oldest_is_sent_on_to_free_one() -> None:
    order: list[int] = []

    async def turn() -> None:
        loop = asyncio.get_running_loop()
        taken = [splicing.take_pipe() for _ in range(splicing._KEEP)]
        assert all(taken)
        for i, pipe in enumerate(taken):
            assert pipe is not None

            def send(i: int = i, pipe: splicing.Pipe = pipe) -> None:
                order.append(i)
                splicing.discard(pipe)

            splicing.later(loop, send)
        live = splicing._live[0]
        again = splicing.take_pipe()  # no new pipe: the first in line goes now
        assert again is taken[0] and order == [0] and splicing._live[0] == live
        assert again is not None
        splicing.discard(again)
        await asyncio.sleep(0)
        assert order == list(range(splicing._KEEP))

    asyncio.run(turn())
