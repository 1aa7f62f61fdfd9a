"""File bytes from the page cache straight to a client socket, with sendfile(2).

``loop.sendfile`` would do this on the stock asyncio loop, but uvloop does not implement it,
so this calls ``os.sendfile`` itself on a duplicate of the transport's socket descriptor:
the loop refuses to watch a descriptor a transport owns, and a duplicate keeps our writes
on the right socket even if the transport closes (and its number is reused) meanwhile.
The transport's own buffer is emptied first, so the file follows what was written before.
Plain TCP only: a TLS transport must encrypt, so its caller writes the bytes instead.
"""

from __future__ import annotations

import asyncio
import os

# How long one wait for the socket to drain may last before the transport is checked again
# (it may have been closed: then the duplicate must not keep the socket alive).
_RECHECK = 1.0


def plain_socket(transport: asyncio.BaseTransport) -> int:
    """The descriptor of a plain (not TLS) socket transport, or -1: a TLS transport must see
    the bytes to encrypt them, so the kernel cannot move them for it."""
    if transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


def can_sendfile(transport: asyncio.BaseTransport) -> bool:
    return plain_socket(transport) >= 0


async def sendfile(transport: asyncio.WriteTransport, fd: int, offset: int, count: int) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset``; raises ConnectionError when the
    client connection ends first, OSError when the file is shorter than ``count``."""
    loop = asyncio.get_running_loop()
    out = os.dup(transport.get_extra_info("socket").fileno())
    try:
        while transport.get_write_buffer_size():
            await _writable(loop, out, transport)
        while count > 0:
            if transport.is_closing():
                raise ConnectionResetError("the client connection closed")
            try:
                sent = os.sendfile(out, fd, offset, count)
            except BlockingIOError:
                await _writable(loop, out, transport)
                continue
            if sent == 0:
                raise OSError("the file is shorter than its size said")
            offset += sent
            count -= sent
    finally:
        os.close(out)


async def _writable(
    loop: asyncio.AbstractEventLoop, fd: int, transport: asyncio.WriteTransport
) -> None:
    if transport.is_closing():
        raise ConnectionResetError("the client connection closed")
    waiter: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _wake, waiter)
    timer = loop.call_later(_RECHECK, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_writer(fd)
        timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
