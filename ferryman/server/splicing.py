"""Body bytes from one socket to another without entering Python: splice(2) through a pipe.

A large response body of known length need not be read into Python only to be written out
again. The upstream connection reads a response a head at a time; once the head is parsed,
the body still waiting in the upstream socket goes to the client socket inside the kernel:
socket to pipe to socket, its pages passed on by reference instead of copied out and back.

The pipe belongs to the worker and is empty between calls: what the client socket cannot
take at once is read back out of it and returned, for the caller to write the usual way
(buffered, with backpressure). So no bytes ever wait in the pipe, and one pipe serves every
connection. Linux only: elsewhere :data:`AVAILABLE` is False and bodies take the usual path.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import termios
from typing import Final

# FERRYMAN_NOSPLICE=1 turns it off, like HAProxy's ``nosplice``: a way around a kernel
# that splices badly, and the other side of a comparison.
AVAILABLE: Final = hasattr(os, "splice") and os.environ.get("FERRYMAN_NOSPLICE", "") in ("", "0")

_PIPE_SIZE: Final = 1 << 20  # the most an unprivileged process may ask for by default
_MOVE: Final = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0

# (pid, read end, write end, capacity): a forked worker must not share its parent's pipe.
_pipe: tuple[int, int, int, int] = (0, -1, -1, 0)


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor of a plain TCP (or Unix) socket transport, or -1 where its bytes
    cannot be spliced: TLS must pass through Python to be encrypted or decrypted."""
    if not AVAILABLE or transport.get_extra_info("sslcontext") is not None:
        return -1
    if transport.get_extra_info("ssl_object") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


def waiting(fd: int) -> int:
    """How many bytes socket ``fd`` holds unread."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def _the_pipe() -> tuple[int, int, int]:
    global _pipe
    pid, r, w, size = _pipe
    if pid != os.getpid():
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:  # over the user's pipe quota: the default size still works
            size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        _pipe = (os.getpid(), r, w, size)
    return r, w, size


def relay(src: int, dst: int, first: list[bytes | memoryview], count: int) -> tuple[int, bytes]:
    """Send the bytes of ``first``, then up to ``count`` bytes waiting on socket ``src``, to
    socket ``dst``, as one stream. Returns how many bytes were taken from ``src`` and the
    bytes ``dst`` could not take at once, which the caller must write before anything else.

    ``first`` is emptied once sent; when it is too large for the pipe, nothing is done and
    (0, b"") returned. A failure reading ``src`` just stops the relay: the connection's own
    next read reports it. Nothing waits on either socket.
    """
    r, w, size = _the_pipe()
    queued = sum(map(len, first))
    if queued > size // 2:
        return 0, b""
    if queued:
        os.writev(w, first)  # an empty pipe takes this whole: it is at most half its size
        first.clear()
    taken = 0
    try:
        while taken < count:
            moved = os.splice(src, w, count - taken, flags=_MOVE)
            if not moved:
                break  # end of stream: the upstream's reader sees it next
            taken += moved
    except OSError:
        pass  # nothing more waiting (EAGAIN), the pipe is full, or src failed: stop here
    queued += taken
    sent = 0
    try:
        while sent < queued:
            sent += os.splice(r, dst, queued - sent, flags=_MOVE)
    except OSError:
        # The client is not keeping up (EAGAIN) or is gone: the rest comes back out of the
        # pipe, for the transport to buffer, or to fail on and close, as for any write.
        pass
    if sent == queued:
        return taken, b""
    rest = [os.read(r, queued - sent)]
    left = queued - sent - len(rest[0])
    while left > 0:
        rest.append(os.read(r, left))
        left -= len(rest[-1])
    return taken, b"".join(rest)
