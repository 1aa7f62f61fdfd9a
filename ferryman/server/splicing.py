"""Body bytes from one socket to another without entering Python: splice(2) through a pipe.

A large response body of known length need not be read into Python only to be written out
again. The upstream connection reads a response a head at a time; once the head is parsed,
the body still waiting in the upstream socket goes to the client socket inside the kernel:
socket to pipe to socket, its pages passed on by reference instead of copied out and back.

Each client connection with a body on its way holds a pipe from the worker's pool until the
end of the event loop's turn, when every filled pipe is drained into its client socket (see
:func:`later`). What a client socket cannot take then is read back out of the pipe and
handed to the transport (buffered, with backpressure), so a pipe goes back to the pool empty.
Linux only: elsewhere :data:`AVAILABLE` is False and bodies take the usual path.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import os
import termios
from collections.abc import Callable
from typing import Final

from ferryman.server.sendfile import plain_socket

# FERRYMAN_NOSPLICE=1 turns it off, like HAProxy's ``nosplice``: a way around a kernel
# that splices badly, and the other side of a comparison.
AVAILABLE: Final = hasattr(os, "splice") and os.environ.get("FERRYMAN_NOSPLICE", "") in ("", "0")

# 64 pages: a 64 KiB body and its head fit one pipe with room to spare, and a 1 MiB body
# passes in four fills (with 128 KiB pipes it took twice the CPU, measured). Linux counts
# pipe pages per user (16384 by default, shared by every process of the user, and a pipe
# made over it gets two pages), so the pool is kept small: 16 pipes, 1024 pages a worker.
_PIPE_SIZE: Final = 256 * 1024
_MOVE: Final = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if AVAILABLE else 0
_KEEP: Final = 16  # empty pipes kept for the next responses

log = logging.getLogger("ferryman")


class Pipe:
    __slots__ = ("queued", "r", "size", "w")

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                self.size = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:  # over the user's quota of pipe pages: the default size works
                self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)
        except OSError:
            os.close(self.r)
            os.close(self.w)
            raise
        _live[0] += 1
        self.queued = 0  # bytes in the pipe

    def close(self) -> None:
        _live[0] -= 1
        os.close(self.r)
        os.close(self.w)


_free: list[Pipe] = []
_live = [0]  # pipes open in this process
_later: list[Callable[[], None]] = []
# The loop whose next turn runs ``_later``; a loop stopped before that must not strand it.
_batch_loop: list[asyncio.AbstractEventLoop | None] = [None]


def _forget() -> None:
    """In a forked child: bytes of two processes must never meet in one pipe."""
    for pipe in _free:
        pipe.close()
    _free.clear()
    _live[0] = 0
    _later.clear()
    _batch_loop[0] = None


os.register_at_fork(after_in_child=_forget)


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor to splice to or from, or -1 (TLS, or no splice(2) here)."""
    return plain_socket(transport) if AVAILABLE else -1


def waiting(fd: int) -> int:
    """How many bytes socket ``fd`` holds unread."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def take_pipe() -> Pipe | None:
    """An empty pipe, or None when no more can be made (out of descriptors)."""
    if not _free and _live[0] >= _KEEP:
        # Every pipe waits for the end of this turn: send the oldest on now instead of
        # making pipes to close again at the end of the turn.
        while not _free and _later:
            _call(_later.pop(0))
    if _free:
        return _free.pop()
    try:
        return Pipe()
    except OSError as e:
        log.warning("no pipe to splice a body through (%s): the body is copied", e)
        return None


def _give_back(pipe: Pipe) -> None:
    if len(_free) < _KEEP:
        _free.append(pipe)
    else:
        pipe.close()


def fill(pipe: Pipe, first: list[bytes | memoryview], src: int, count: int) -> int:
    """Put the bytes of ``first``, then up to ``count`` bytes waiting on socket ``src``, in
    ``pipe`` (emptied before). Returns how many were taken from ``src``.

    ``first`` is emptied once in the pipe; when it is too large for the pipe, nothing is done
    and 0 returned. A failure reading ``src`` just stops the filling: the connection's own
    next read reports it. Nothing waits.
    """
    queued = sum(map(len, first))
    if queued > pipe.size // 2:
        return 0
    if queued:
        os.writev(pipe.w, first)  # an empty pipe takes this whole: it is at most half its size
        first.clear()
    taken = 0
    try:
        while taken < count:
            moved = os.splice(src, pipe.w, count - taken, flags=_MOVE)
            if not moved:
                break  # end of stream: the upstream's reader sees it next
            taken += moved
    except OSError:
        pass  # nothing more waiting (EAGAIN), the pipe is full, or src failed: stop here
    pipe.queued = queued + taken
    return taken


def drain(pipe: Pipe, dst: int) -> bytes:
    """Send what ``pipe`` holds to socket ``dst`` and give the pipe back. Returns the bytes
    ``dst`` could not take at once, which the caller must write before anything else."""
    queued = pipe.queued
    sent = 0
    try:
        while sent < queued:
            sent += os.splice(pipe.r, dst, queued - sent, flags=_MOVE)
    except OSError:
        # The client is not keeping up (EAGAIN) or is gone: the rest comes back out of the
        # pipe, for the transport to buffer, or to fail on and close, as for any write.
        pass
    rest = _read_out(pipe, queued - sent)
    _give_back(pipe)
    return rest


def discard(pipe: Pipe) -> None:
    """Drop what ``pipe`` holds (its client is gone) and give it back."""
    _read_out(pipe, pipe.queued)
    _give_back(pipe)


def _read_out(pipe: Pipe, left: int) -> bytes:
    pipe.queued = 0
    if not left:
        return b""
    rest = [os.read(pipe.r, left)]
    left -= len(rest[0])
    while left > 0:
        rest.append(os.read(pipe.r, left))
        left -= len(rest[-1])
    return b"".join(rest)


def later(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` once this turn of ``loop`` (the running one, passed in: asking for
    it costs a getpid(2) each time) has handled its events.

    Filled pipes are drained then, together: the client (a load generator, a browser) is
    woken once for a batch of responses instead of once per response, a wake-up that costs
    more than the rest of a spliced response when the client's CPU sits idle (measured).
    """
    if _batch_loop[0] is not loop:
        _batch_loop[0] = loop
        loop.call_soon(_run_later)
    _later.append(callback)


def _run_later() -> None:
    _batch_loop[0] = None
    batch = _later[:]
    _later.clear()
    for callback in batch:
        _call(callback)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # one connection's failure must not strand the others' pipes
        log.exception("draining a spliced body failed")
