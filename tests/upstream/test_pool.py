"""The keep-alive pool against a real upstream socket on loopback."""

from __future__ import annotations

import asyncio

from ferryman.http.h1 import ResponseHead
from ferryman.upstream.connection import UpstreamConnection
from ferryman.upstream.peer import Peer
from ferryman.upstream.pool import Pool


class Owner:
    """Records what an exchange borrowing the connection would be told."""

    def __init__(self) -> None:
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.body = b""
        self.lost = ""

    def on_response(self, head: ResponseHead) -> None:
        pass

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.body += data

    def on_response_end(self, keep_alive: bool) -> None:
        self.ended.set_result(keep_alive)

    def on_upstream_upgrade(self, leftover: bytes) -> None:
        pass

    def on_upstream_lost(self, reason: str, clean: bool = False) -> None:
        self.lost = reason

    def on_upstream_pause_writing(self) -> None:
        pass

    def on_upstream_resume_writing(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def on_upstream_timeout(self) -> None:
        pass


def _ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def upstream(
    extra: bytes = b"", close_after: float | None = None, response: bytes | None = None
) -> asyncio.Server:
    """Answers every request with ``response`` (default: 200 "ok", then ``extra``), in one
    write."""
    answer = response if response is not None else _ok(b"ok") + extra

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
                if close_after is not None:
                    await asyncio.sleep(close_after)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the pool closed its connection
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def one_exchange(pool: Pool, peer: Peer) -> Owner:
    conn = pool.acquire_idle(peer) or await pool.connect(peer)
    owner = Owner()
    conn.attach(owner, "GET")
    conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    keep_alive = await owner.ended
    assert keep_alive and owner.body == b"ok"
    pool.release(conn)
    return owner


def test_reuse_then_idle_close_frees_the_slot() -> None:
    async def main() -> None:
        server = await upstream(close_after=0.2)
        peer = Peer(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        pool = Pool(max_idle=1, idle_timeout=60, max_requests=100)
        await one_exchange(pool, peer)
        assert pool.idle_count == 1
        await asyncio.sleep(0.4)  # the upstream closes its side while we hold it idle
        assert pool.idle_count == 0
        assert pool.acquire_idle(peer) is None
        pool.close()
        server.close()

    asyncio.run(main())


def test_stray_bytes_after_a_response_retire_the_connection() -> None:
    async def main() -> None:
        server = await upstream(extra=b"HTTP/1.1 200 OK\r\n")  # more than was asked for
        peer = Peer(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        pool = Pool(max_idle=4, idle_timeout=60, max_requests=100)
        await one_exchange(pool, peer)
        await asyncio.sleep(0.05)
        assert pool.acquire_idle(peer) is None  # never lent again
        pool.close()
        server.close()

    asyncio.run(main())


def test_idle_timeout_and_cap() -> None:
    async def main() -> None:
        server = await upstream()
        peer = Peer(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        pool = Pool(max_idle=1, idle_timeout=0.2, max_requests=100)
        a = await pool.connect(peer)
        b = await pool.connect(peer)
        pool.release(a)
        pool.release(b)  # over the cap of one idle connection: closed
        assert pool.idle_count == 1 and b.closed
        await asyncio.sleep(0.5)
        assert pool.idle_count == 0 and a.closed
        pool.close()
        server.close()

    asyncio.run(main())


class Releasing(Owner):
    """Gives the connection back from inside on_response_end, as the proxy does, and then
    asks for one at once, as a pipelined request would."""

    def __init__(self, pool: Pool, peer: Peer) -> None:
        super().__init__()
        self.pool, self.peer = pool, peer
        self.conn: UpstreamConnection | None = None
        self.lent_again: UpstreamConnection | None = None

    def on_response_end(self, keep_alive: bool) -> None:
        assert self.conn is not None
        self.pool.release(self.conn)
        self.lent_again = self.pool.acquire_idle(self.peer)
        super().on_response_end(keep_alive)


async def _released_from_inside(
    response: bytes,
) -> tuple[asyncio.Server, Pool, Peer, Releasing, UpstreamConnection]:
    """One exchange with an upstream that answers ``response``, the owner giving the
    connection back from inside on_response_end."""
    server = await upstream(response=response)
    peer = Peer(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    pool = Pool(max_idle=4, idle_timeout=60, max_requests=100)
    owner = Releasing(pool, peer)
    conn = owner.conn = await pool.connect(peer)
    conn.attach(owner, "GET")
    conn.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await owner.ended
    return server, pool, peer, owner, conn


def test_a_connection_whose_read_goes_on_past_the_response_is_not_lent_from_inside_it() -> None:
    async def main() -> None:
        for body in (b"ok", b"x" * 40_000):  # parsed by llhttp; passed through
            server, pool, peer, owner, conn = await _released_from_inside(
                _ok(body) + b"HTTP/1.1 200 OK\r\n"
            )
            await asyncio.sleep(0.05)
            assert owner.body == body and owner.lent_again is None
            assert conn.closed and pool.acquire_idle(peer) is None
            pool.close()
            server.close()

    asyncio.run(main())


def test_a_clean_read_gives_the_connection_back_once_parsed() -> None:
    async def main() -> None:
        # A stray CRLF after the body is fine.
        server, pool, peer, owner, conn = await _released_from_inside(_ok(b"y" * 40_000) + b"\r\n")
        # Not lent while its read was being parsed; lent once it was.
        assert owner.ended.result() and owner.lent_again is None
        assert pool.acquire_idle(peer) is conn and not conn.closed
        conn.close()
        pool.close()
        server.close()
        await asyncio.sleep(0.05)

    asyncio.run(main())
