"""The one object every phase of a request receives."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ferryman.http.headers import HeaderList

if TYPE_CHECKING:
    from ferryman.routing.table import CompiledRoute


class RequestContext:
    """Everything known about one request, from its first byte to its log line.

    Filters read and change it; plugins keep their own data in :attr:`state`.
    """

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "client_addr",
        "client_port",
        "error",
        "headers",
        "host",
        "method",
        "path",
        "query",
        "route",
        "scheme",
        "server_port",
        "start",
        "state",
        "status",
        "target",
        "tls",
        "upstream_addr",
        "upstream_status",
        "upstream_target",
        "user",
        "version",
    )

    def __init__(
        self,
        client_addr: str,
        client_port: int,
        server_port: int,
        scheme: str,
        method: str,
        target: bytes,
        version: str,
        headers: HeaderList,
        host: str,
    ) -> None:
        self.client_addr = client_addr
        self.client_port = client_port
        self.server_port = server_port
        self.scheme = scheme
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.host = host
        path, _, query = target.partition(b"?")
        self.path = path
        self.query = query
        self.route: CompiledRoute | None = None
        self.upstream_target = target
        self.upstream_addr = ""
        self.upstream_status = 0
        self.status = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.start = time.time()
        self.error = ""
        self.user = ""
        self.tls: dict[str, str] | None = None
        self.state: dict[str, Any] = {}

    @property
    def duration(self) -> float:
        return time.time() - self.start


class Response:
    """A whole response made by Ferryman or a filter (an error, a redirect, a 401, a cache hit)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: HeaderList | None = None) -> None:
        self.status = status
        self.body = body
        self.headers: HeaderList = headers if headers is not None else []
