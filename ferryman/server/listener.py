"""What the connections of one listening address share, and opening that address."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ferryman.config.base import parse_hostport
from ferryman.config.schema import Http2
from ferryman.config.schema import Limits as LimitsConfig
from ferryman.http.h1 import Limits
from ferryman.http.h2conn import Limits as H2Limits
from ferryman.routing.table import HostTable

if TYPE_CHECKING:
    from ferryman.server.h1 import H1Connection
    from ferryman.server.h2 import H2Server
    from ferryman.server.tls import ListenerTls


class Listener:
    __slots__ = (
        "address",
        "body_timeout",
        "connections",
        "draining",
        "forward",
        "h2_limits",
        "header_timeout",
        "hosts",
        "http2",
        "keepalive_requests",
        "keepalive_timeout",
        "limits",
        "parser_limits",
        "port",
        "scheme",
        "send_timeout",
        "tls",
    )

    def __init__(
        self,
        address: str,
        hosts: HostTable,
        limits: LimitsConfig,
        scheme: str = "http",
        forward: Any = None,
        tls: ListenerTls | None = None,
        http2: Http2 | None = None,
    ) -> None:
        self.address = address
        self.port = parse_hostport(address)[1]
        self.hosts = hosts
        self.limits = limits
        # The limits every request reads, as plain attributes: a config model's are slower.
        self.header_timeout: float = limits.client_header_timeout
        self.body_timeout: float = limits.client_body_timeout
        self.send_timeout: float = limits.send_timeout
        self.keepalive_timeout: float = limits.keepalive_timeout
        self.keepalive_requests: int = limits.keepalive_requests
        self.parser_limits = Limits(
            limits.max_request_line, limits.max_header_size, limits.max_headers
        )
        self.scheme = "https" if tls is not None else scheme
        self.tls = tls
        self.http2 = cfg = http2 or Http2()
        self.h2_limits = H2Limits(
            cfg.max_concurrent_streams,
            cfg.max_header_list_size,
            cfg.initial_window_size,
            cfg.connection_window_size,
            cfg.max_frame_size,
            cfg.max_resets_per_second,
            cfg.max_control_frames_per_second,
        )
        # The forward-proxy side for absolute-form requests and CONNECT, when configured.
        self.forward = forward
        self.connections: set[H1Connection | H2Server] = set()
        self.draining = False


def open_socket(address: str, reuse_port: bool = True, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket; with SO_REUSEPORT each worker opens its own on the same port."""
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
