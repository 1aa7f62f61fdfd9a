"""HTTP/2 upstream groups: one pool per group, shared by its routes and closed at shutdown."""

from __future__ import annotations

from ferryman.build import Runtime
from ferryman.config.loader import parse_config
from ferryman.proxy.h2proxy import H2ProxyRoute

CONFIG = """
upstreams:
  grpc:
    protocol: h2c
    servers: [{address: "127.0.0.1:9"}]
  plain:
    servers: [{address: "127.0.0.1:9"}]
servers:
  - listen: ["127.0.0.1:8080"]
    routes:
      - path: /a/
        proxy: {upstream: grpc}
      - path: /b/
        proxy: {upstream: grpc}
      - path: /c/
        proxy: {upstream: plain}
"""


def test_routes_to_one_h2_group_share_its_connections() -> None:
    runtime = Runtime(parse_config(CONFIG))
    group = runtime.groups["grpc"]
    vhost = runtime.hosts["127.0.0.1:8080"].default
    handlers = [r.handler for r in vhost.prefixes if isinstance(r.handler, H2ProxyRoute)]
    assert len(handlers) == 2
    assert group.h2pool is not None
    assert all(h.pool is group.h2pool for h in handlers)
    assert not hasattr(group, "pool")  # no HTTP/1.1 pool nothing would use
    assert runtime.groups["plain"].h2pool is None


class FakeConn:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_closing_an_h2_group_closes_its_connections() -> None:
    group = Runtime(parse_config(CONFIG)).groups["grpc"]
    assert group.h2pool is not None
    conn = FakeConn()
    group.h2pool._conns[group.peers[0]] = conn  # type: ignore[assignment]
    group.close()
    assert conn.closed
    assert not group.h2pool._conns
