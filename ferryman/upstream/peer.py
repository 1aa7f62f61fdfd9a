"""One upstream server and its passive health (nginx ``max_fails`` / ``fail_timeout``)."""

from __future__ import annotations

from ferryman.config.base import parse_hostport
from ferryman.config.schema import split_scheme


class Peer:
    __slots__ = (
        "active",
        "address",
        "backup",
        "current_weight",
        "down_until",
        "fail_timeout",
        "fails",
        "first_fail",
        "host",
        "host_header",
        "max_fails",
        "port",
        "tls",
        "weight",
    )

    def __init__(
        self,
        address: str,
        weight: int = 1,
        backup: bool = False,
        max_fails: int = 1,
        fail_timeout: float = 10.0,
    ) -> None:
        self.address = address
        scheme, hostport = split_scheme(address)
        self.tls = scheme == "https"  # the group's ``tls.enabled`` may also turn it on
        default_port = 443 if self.tls else 80
        self.host, self.port = parse_hostport(hostport, default_port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = self.port
        self.host_header = (host if port == default_port else f"{host}:{port}").encode("latin-1")
        self.weight = weight
        self.backup = backup
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.fails = 0
        self.first_fail = 0.0
        self.down_until = 0.0
        self.current_weight = 0
        self.active = 0  # requests in flight, for least_conn and two random choices

    def available(self, now: float) -> bool:
        return self.down_until <= now

    def failed(self, now: float) -> None:
        if self.max_fails == 0:
            return
        if now - self.first_fail > self.fail_timeout:
            self.fails = 0
            self.first_fail = now
        self.fails += 1
        if self.fails >= self.max_fails:
            self.down_until = now + self.fail_timeout

    def succeeded(self) -> None:
        if self.fails:
            self.fails = 0
            self.down_until = 0.0

    def __repr__(self) -> str:
        return f"<Peer {self.address} w={self.weight} active={self.active} fails={self.fails}>"
