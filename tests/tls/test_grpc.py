"""gRPC through Ferryman: a real grpcio client and server, unary and server-streaming calls,
over TLS with ALPN h2 toward Ferryman and h2c toward the upstream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from tests.support.procs import Proc, free_port
from tests.tls.conftest import Certs


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    context.set_trailing_metadata((("x-served-by", "grpc-origin"),))
    return b"echo:" + request


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count = int(request)
    for i in range(count):
        yield b"part %d " % i + b"x" * 40_000  # several frames each, larger than one window


@pytest.fixture
def grpc_origin() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    yield port
    server.stop(0).wait()


@pytest.fixture
def channel(
    certs: Certs, grpc_origin: int, ferryman: Callable[..., Proc]
) -> Iterator[grpc.Channel]:
    cert, key = certs.make("grpc", "grpc.example.com")
    port = free_port()
    ferryman(
        f"""
workers: 1
upstreams:
  grpc_backend:
    protocol: h2c
    servers: [{{address: "127.0.0.1:{grpc_origin}"}}]
servers:
  - listen: ["127.0.0.1:{port}"]
    server_names: [grpc.example.com]
    tls: {{cert: "{cert}", key: "{key}"}}
    routes:
      - path: /test.Echo/
        proxy: {{upstream: grpc_backend}}
""",
        port,
    )
    creds = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    ch = grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "grpc.example.com")]
    )
    yield ch
    ch.close()


def test_unary_call_with_trailers(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/test.Echo/Unary")
    response, info = call.with_call(b"hello", timeout=10)
    assert response == b"echo:hello"
    assert info.code() == grpc.StatusCode.OK
    assert ("x-served-by", "grpc-origin") in info.trailing_metadata()


def test_error_status_passes_through(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/test.Echo/Unary")
    with pytest.raises(grpc.RpcError) as info:
        call(b"missing", timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"


def test_server_streaming(channel: grpc.Channel) -> None:
    call = channel.unary_stream("/test.Echo/Stream")
    parts = list(call(b"50", timeout=20))
    assert len(parts) == 50
    assert parts[7].startswith(b"part 7 ")
    assert all(len(p) > 40_000 for p in parts)


def test_many_concurrent_calls_share_one_connection(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/test.Echo/Unary")
    pending = [call.future(b"n%d" % i, timeout=10) for i in range(100)]
    assert [f.result() for f in pending] == [b"echo:n%d" % i for i in range(100)]


def test_grpc_to_a_tls_upstream(certs: Certs, ferryman: Callable[..., Proc]) -> None:
    """``protocol: h2``: HTTP/2 over TLS toward the upstream, certificate verified."""
    origin_cert, origin_key = certs.make("grpc-origin", "localhost")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(_unary)}
            ),
        )
    )
    creds = grpc.ssl_server_credentials([(origin_key.read_bytes(), origin_cert.read_bytes())])
    origin_port = server.add_secure_port(f"127.0.0.1:{free_port()}", creds)
    server.start()
    try:
        port = free_port()
        ferryman(
            f"""
workers: 1
http2: {{h2c: true}}
upstreams:
  grpc_tls:
    protocol: h2
    servers: [{{address: "https://localhost:{origin_port}"}}]
    tls: {{ca_file: "{certs.ca}"}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /
        proxy: {{upstream: grpc_tls}}
""",
            port,
        )
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            response, info = ch.unary_unary("/test.Echo/Unary").with_call(b"tls", timeout=10)
        assert response == b"echo:tls"
        assert ("x-served-by", "grpc-origin") in info.trailing_metadata()
    finally:
        server.stop(0).wait()
