"""``https://`` upstreams: verification on by default, a CA file, SNI and Host, client
certificates, and keep-alive reuse of TLS connections."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.procs import Proc, free_port
from tests.tls.conftest import Certs


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        sock = self.request
        peer_cert = sock.getpeercert()
        subject = dict(x[0] for x in peer_cert["subject"]) if peer_cert else {}
        body = json.dumps(
            {
                "host": self.headers.get("host"),
                "sni": getattr(sock, "seen_sni", None),
                "client_cn": subject.get("commonName"),
                "client_port": self.client_address[1],
                "proto": self.headers.get("x-forwarded-proto"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _tls_origin(certs: Certs, require_client_cert: bool) -> tuple[ThreadingHTTPServer, int]:
    cert, key = certs.make(f"origin{int(require_client_cert)}", "localhost", "backend.internal")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(certs.ca)

    def on_sni(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        sslobj.seen_sni = name  # type: ignore[attr-defined]

    ctx.sni_callback = on_sni  # type: ignore[assignment]
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


@pytest.fixture
def upstream_tls(certs: Certs, ferryman: Callable[..., Proc]) -> Iterator[int]:
    plain, port1 = _tls_origin(certs, require_client_cert=False)
    mutual, port2 = _tls_origin(certs, require_client_cert=True)
    client_cert, client_key = certs.make("client", "ferryman-client")
    port = free_port()
    ferryman(
        f"""
workers: 1
upstreams:
  trusted:
    servers: [{{address: "https://localhost:{port1}"}}]
    tls: {{ca_file: "{certs.ca}"}}
  named:
    servers: [{{address: "https://127.0.0.1:{port1}"}}]
    tls: {{ca_file: "{certs.ca}", server_name: backend.internal}}
  system_store:
    servers: [{{address: "https://localhost:{port1}"}}]
  mutual:
    servers: [{{address: "https://localhost:{port2}"}}]
    tls: {{ca_file: "{certs.ca}", cert: "{client_cert}", key: "{client_key}"}}
  mutual_no_cert:
    servers: [{{address: "https://localhost:{port2}"}}]
    tls: {{ca_file: "{certs.ca}"}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - {{path: /trusted, proxy: {{upstream: trusted, host: upstream}}}}
      - {{path: /pass, proxy: {{upstream: trusted}}}}
      - {{path: /named, proxy: {{upstream: named}}}}
      - {{path: /system, proxy: {{upstream: system_store}}}}
      - {{path: /mutual, proxy: {{upstream: mutual}}}}
      - {{path: /nocert, proxy: {{upstream: mutual_no_cert}}}}
""",
        port,
    )
    yield port
    for server in (plain, mutual):
        server.shutdown()
        server.server_close()


def test_verified_upstream_sni_host_and_keepalive(upstream_tls: int) -> None:
    base = f"http://127.0.0.1:{upstream_tls}"
    with httpx.Client(base_url=base) as c:
        seen = [c.get("/trusted").json() for _ in range(5)]
        assert all(s["sni"] == "localhost" for s in seen)
        assert seen[0]["host"].startswith("localhost:")
        assert seen[0]["proto"] == "http"
        # One TLS connection, kept alive and reused by the pool.
        assert len({s["client_port"] for s in seen}) == 1
        passed = c.get("/pass", headers={"host": "www.example.com"}).json()
        assert passed["host"] == "www.example.com"
        assert passed["sni"] == "localhost"  # SNI names the upstream, not the client's Host
        named = c.get("/named").json()
        assert named["sni"] == "backend.internal"


def test_verification_is_on_by_default(upstream_tls: int) -> None:
    # The development CA is not in the system store: the upstream cannot be trusted.
    r = httpx.get(f"http://127.0.0.1:{upstream_tls}/system")
    assert r.status_code == 502


def test_client_certificate(upstream_tls: int) -> None:
    r = httpx.get(f"http://127.0.0.1:{upstream_tls}/mutual")
    assert r.status_code == 200
    assert r.json()["client_cn"] == "ferryman-client"
    r = httpx.get(f"http://127.0.0.1:{upstream_tls}/nocert")
    assert r.status_code == 502
