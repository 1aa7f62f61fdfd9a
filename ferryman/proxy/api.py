"""The two interfaces between the client side (``server/``) and a handler."""

from __future__ import annotations

from typing import Protocol

from ferryman.context import RequestContext
from ferryman.http.headers import HeaderList


class Downstream(Protocol):
    """The client a response goes to. Implemented by the HTTP/1.1 (and later HTTP/2) sides."""

    ctx: RequestContext

    def send_interim(self, status: int, headers: HeaderList) -> None:
        """A 1xx response (103 Early Hints); ignored where the client cannot take it."""

    def start_response(self, status: int, headers: HeaderList, length: int | None) -> None:
        """Send the head; ``length`` None means the body's length is unknown (streamed)."""

    def write(self, data: bytes | memoryview) -> None: ...
    def flush(self) -> None:
        """Send what was written so far (the head and body of a small response leave in one
        write when a handler calls this once per batch)."""

    def set_send_buffer(self, size: int) -> None:
        """Hold up to ``size`` response bytes for this client before asking the handler to
        pause (HTTP/1.1); HTTP/2 has its flow-control windows instead."""

    async def send_file(self, fd: int, offset: int, count: int) -> bool:
        """Send ``count`` bytes of the open file ``fd`` from ``offset`` as (part of) the body
        straight from the kernel (sendfile(2)). False, with nothing sent, where this side
        cannot (TLS, HTTP/2 framing): the handler then reads and writes the bytes itself."""
        ...

    def can_splice(self) -> bool:
        """Whether :meth:`splice_from` can take body bytes here (a plain TCP client)."""
        ...

    def splice_from(self, fd: int, count: int) -> int:
        """Send up to ``count`` body bytes waiting on socket ``fd`` straight from the kernel
        (splice(2)), after what was written so far; returns how many went. 0 where this
        side cannot (TLS, HTTP/2 framing, a chunked body, bytes already waiting to go out):
        the handler then reads and writes them itself."""
        ...

    def finish(self) -> None:
        """The response is complete."""

    def abort(self, reason: str) -> None:
        """The response cannot be completed: close the connection so the client can tell."""

    def respond(self, status: int, headers: HeaderList, body: bytes) -> None:
        """A whole response at once, through the route's response filters."""

    def error(self, status: int, message: str) -> None:
        """One of Ferryman's own errors, in the server's error format."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def start_tunnel(self, peer: Tunnel, status: int, headers: HeaderList) -> bytes:
        """Answer ``status`` (101, or 200 to a CONNECT), then hand the connection's bytes to
        ``peer``; returns the bytes already read past the request."""
        ...

    def tunnel_write(self, data: bytes | memoryview) -> None: ...
    def tunnel_close(self) -> None: ...


class Tunnel(Protocol):
    def from_client(self, data: bytes) -> None: ...
    def client_closed(self) -> None: ...
    def client_pause_writing(self) -> None: ...
    def client_resume_writing(self) -> None: ...


class Exchange(Protocol):
    """A handler's state for one request in flight."""

    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...
    def on_downstream_pause(self) -> None: ...
    def on_downstream_resume(self) -> None: ...
    def on_downstream_lost(self) -> None: ...


class Handler(Protocol):
    def start(self, ctx: RequestContext, downstream: Downstream) -> Exchange | None: ...
