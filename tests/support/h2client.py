"""A raw HTTP/2 client on the ``h2`` library and a blocking socket, for tests that need to
see frames (resets, GOAWAY) or send what no polite client would."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import h2.config
import h2.connection
import h2.events


class RawH2:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        server_name: str = "localhost",
        timeout: float = 5.0,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            sock = tls.wrap_socket(sock, server_hostname=server_name)
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.flush()
        self.events: list[Any] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> bool:
        """Bytes straight onto the socket; False once the server has closed it."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def read(self, seconds: float = 0.2) -> list[Any]:
        """Events that arrive within ``seconds`` (or until the server closes)."""
        got: list[Any] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closed:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                got += self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                self.closed = True
                break
            self.flush()
        self.events += got
        return got

    def request(
        self, path: str, authority: str = "localhost", method: str = "GET", body: bytes = b""
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    def response(self, sid: int, seconds: float = 5.0) -> tuple[int, dict[bytes, bytes], bytes]:
        status = 0
        headers: dict[bytes, bytes] = {}
        body = b""
        deadline = time.monotonic() + seconds
        seen = 0
        while time.monotonic() < deadline:
            for ev in self.events[seen:]:
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = dict(ev.headers)
                    status = int(headers[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    self.flush()
                    return status, headers, body
            seen = len(self.events)
            if self.closed:
                break
            self.read(0.05)
        return status, headers, body

    def close(self) -> None:
        self.sock.close()
