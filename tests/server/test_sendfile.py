"""sendfile(2) onto a real loopback connection, on the stock loop and on uvloop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ferryman.server.sendfile import can_sendfile, sendfile

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run(factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class Sender(asyncio.Protocol):
    """Writes a head through the transport, then part of a file by sendfile, then a tail."""

    def __init__(self, fd: int, offset: int, count: int, done: asyncio.Future[None]) -> None:
        self.fd, self.offset, self.count, self.done = fd, offset, count, done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        asyncio.get_running_loop().create_task(self.send())

    async def send(self) -> None:
        try:
            assert can_sendfile(self.transport)
            self.transport.write(b"HEAD|" * 20000)  # enough to be still buffered, often
            await sendfile(self.transport, self.fd, self.offset, self.count)
            self.transport.write(b"|TAIL")
            self.transport.close()
            self.done.set_result(None)
        except BaseException as e:
            self.transport.close()
            self.done.set_exception(e)


async def exchange(path: Path, offset: int, count: int, slow: bool) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    fd = os.open(path, os.O_RDONLY)
    server = await loop.create_server(lambda: Sender(fd, offset, count, done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    try:
        got = bytearray()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            got += data
            if slow and len(got) < 4_000_000:
                await asyncio.sleep(0.001)  # a slow reader: the socket fills, sendfile waits
        await asyncio.wait_for(done, 10)
        return bytes(got)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
        os.close(fd)


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("slow", [False, True])
def test_sendfile_follows_buffered_bytes(tmp_path: Path, loop: str, slow: bool) -> None:
    path = tmp_path / "blob"
    blob = os.urandom(6_000_000)
    path.write_bytes(blob)
    got = run(LOOPS[loop], exchange(path, 1000, 5_000_000, slow))
    assert got == b"HEAD|" * 20000 + blob[1000:5_001_000] + b"|TAIL"


def test_short_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"x" * 100)
    with pytest.raises(OSError, match="shorter"):
        run(uvloop.new_event_loop, exchange(path, 0, 200, False))
