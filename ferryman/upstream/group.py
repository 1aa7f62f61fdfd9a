"""An upstream group: its peers, balancer, pool and retry policy, built once from config."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from ferryman.config.schema import Retry, Upstream
from ferryman.context import RequestContext
from ferryman.http.headers import get
from ferryman.upstream.balancer import BALANCERS, Balancer, RoundRobin
from ferryman.upstream.h2conn import H2Pool
from ferryman.upstream.peer import Peer
from ferryman.upstream.pool import Pool
from ferryman.upstream.tls import client_context

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamGroup:
    # Kept-alive HTTP/1.1 connections: groups of ``protocol: http/1.1`` only. The others have
    # ``h2pool`` instead, and their keepalive and retry settings do not apply.
    pool: Pool

    def __init__(self, name: str, config: Upstream) -> None:
        self.name = name
        self.peers = [
            Peer(s.address, s.weight, s.backup, s.max_fails, s.fail_timeout) for s in config.servers
        ]
        kind = BALANCERS[config.balance]
        self.primary: Balancer = kind([p for p in self.peers if not p.backup])
        backups = [p for p in self.peers if p.backup]
        self.backup: Balancer | None = kind(backups) if backups else None
        self._only = self.peers[0] if len(self.peers) == 1 else None
        self.protocol = config.protocol
        if config.tls.enabled or config.protocol == "h2":
            for p in self.peers:
                p.tls = True
        secure = any(p.tls for p in self.peers)
        self.h2pool: H2Pool | None = None
        if config.protocol == "http/1.1":
            tls = client_context(config.tls) if secure else None
            self.pool = Pool(
                config.keepalive,
                config.keepalive_timeout,
                config.keepalive_requests,
                tls,
                config.tls.server_name,
            )
        else:
            # One multiplexed connection per server, shared by every route to the group.
            tls = client_context(config.tls, alpn=["h2"]) if secure else None
            self.h2pool = H2Pool(tls, config.tls.server_name)
        self.retry: Retry = config.retry
        self.retry_timeout: float = config.retry.timeout or 0.0
        self.retry_statuses = frozenset(
            int(c[5:]) for c in config.retry.when if c.startswith("http_")
        )
        self.retry_on_error = "error" in config.retry.when
        self.retry_on_timeout = "timeout" in config.retry.when
        self.hashed = config.balance == "hash"  # callers may skip key() when False
        # The request's balancing key, compiled once from ``hash_key``; b"" unless hashing.
        self.key: Callable[[RequestContext], bytes] = (
            _key_function(config.hash_key) if self.hashed else _no_key
        )

    def close(self) -> None:
        """Close the group's upstream connections (the worker's shutdown)."""
        if self.h2pool is not None:
            self.h2pool.close()
        else:
            self.pool.close()

    def pick(self, tried: list[Peer], key: bytes) -> Peer | None:
        """The next peer to try: a live primary, else a live backup, else — when every peer is
        marked down and nothing was tried yet — the primary that has been down longest, since
        refusing all traffic on stale failure marks helps no one (nginx does the same)."""
        now = time.monotonic()
        only = self._only
        if only is not None and not tried and only.down_until <= now:
            return only  # one server and no backup: nothing to balance
        peer = self.primary.pick(now, tried, key)
        if peer is None and self.backup is not None:
            peer = self.backup.pick(now, tried, key)
        if peer is None and not tried:
            primaries = self.primary.peers
            peer = min(primaries, key=lambda p: p.down_until)
        return peer


def _no_key(ctx: RequestContext) -> bytes:
    return b""


def _key_function(hash_key: str) -> Callable[[RequestContext], bytes]:
    """What ``hash_key`` (``remote_addr``, ``uri``, ``header:NAME``, ``cookie:NAME``) takes
    from a request."""
    if hash_key == "remote_addr":
        return lambda ctx: ctx.client_addr.encode()
    if hash_key == "uri":
        return lambda ctx: ctx.target
    kind, _, name = hash_key.partition(":")
    if kind == "header":
        header = name.lower().encode("latin-1")
        return lambda ctx: get(ctx.headers, header) or b""
    prefix = name.encode("latin-1") + b"="
    size = len(prefix)

    def cookie(ctx: RequestContext) -> bytes:
        cookies = get(ctx.headers, b"cookie") or b""
        for part in cookies.split(b";"):
            part = part.strip()
            if part.startswith(prefix):
                return part[size:]
        return b""

    return cookie


def single_peer_group(name: str, address: str) -> UpstreamGroup:
    """The implicit group behind ``proxy: {url: ...}``."""
    from ferryman.config.schema import UpstreamServer

    group = UpstreamGroup(name, Upstream(servers=[UpstreamServer(address=address, max_fails=0)]))
    assert isinstance(group.primary, RoundRobin)
    return group
