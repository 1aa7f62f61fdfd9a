"""HTTP/2 upstream groups: one pool per group, shared by its routes and closed at shutdown."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection

from ferryman.build import Runtime
from ferryman.config.loader import parse_config
from ferryman.http.headers import HeaderList
from ferryman.proxy.h2proxy import H2ProxyRoute
from ferryman.upstream.h2conn import UpstreamH2
from ferryman.upstream.peer import Peer

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


class FakeTransport:
    def __init__(self) -> None:
        self.out = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True


class Owner:
    def __init__(self) -> None:
        self.ended = False

    def on_h2_response(self, status: int, headers: HeaderList, ended: bool) -> None: ...
    def on_h2_data(self, data: bytes, flow: int) -> None: ...
    def on_h2_trailers(self, trailers: HeaderList) -> None: ...
    def on_h2_lost(self, reason: str) -> None: ...
    def on_h2_window(self) -> None: ...

    def on_h2_end(self) -> None:
        self.ended = True


def test_a_replaced_h2_connection_closes_once_its_streams_end() -> None:
    """A connection the pool replaced (it had no stream left to give) is in the pool no more;
    it finishes what it carries, then closes instead of idling open for good."""
    upstream = UpstreamH2(Peer("127.0.0.1:9"))
    transport = FakeTransport()
    upstream.connection_made(transport)  # type: ignore[arg-type]
    server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(transport.out)
    transport.out = b""
    owner = Owner()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    sid = upstream.open_stream(owner, request, end=True)
    server.receive_data(transport.out)
    upstream.retire()
    assert not upstream.usable
    assert not transport.closed  # a stream is still open
    server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    upstream.data_received(server.data_to_send())
    assert owner.ended
    assert transport.closed


class Downstream:
    """The client side, reduced to what a failed exchange touches."""

    def __init__(self) -> None:
        self.errors: list[int] = []

    def error(self, status: int, message: str) -> None:
        self.errors.append(status)


def test_requests_in_flight_are_counted_for_the_balancer() -> None:
    import asyncio

    from ferryman.context import RequestContext
    from tests.support.procs import free_port

    async def main() -> None:
        config = CONFIG.replace("127.0.0.1:9", f"127.0.0.1:{free_port()}")  # nothing listens
        runtime = Runtime(parse_config(config))
        group = runtime.groups["grpc"]
        route = next(
            r.handler
            for r in runtime.hosts["127.0.0.1:8080"].default.prefixes
            if isinstance(r.handler, H2ProxyRoute)
        )
        ctx = RequestContext("127.0.0.1", 1, 8080, "http", "GET", b"/a/x", "1.1", [], "h")
        down = Downstream()
        route.start(ctx, down)  # type: ignore[arg-type]
        assert group.peers[0].active == 1  # counted while it connects
        for _ in range(50):
            await asyncio.sleep(0.01)
            if down.errors:
                break
        assert down.errors == [502]
        assert group.peers[0].active == 0  # and uncounted once it failed
        group.close()

    asyncio.run(main())
