"""TLS termination and HTTP/2 toward clients, driven by curl, httpx and openssl s_client."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.h2client import RawH2
from tests.support.procs import PYTHON, ROOT, Proc, free_port
from tests.tls.conftest import Certs


def _config(certs: Certs, port: int, origin_port: int, extra: str = "") -> str:
    main_cert, main_key = certs.make("main", "example.com", "www.example.com")
    other_cert, other_key = certs.make("other", "static.example.net")
    return f"""
workers: 1
log:
  access:
    format: "$method $request_uri $status $server_protocol $ssl_protocol $ssl_server_name"
{extra}
upstreams:
  app:
    servers: [{{address: "127.0.0.1:{origin_port}"}}]
servers:
  - listen: ["127.0.0.1:{port}"]
    server_names: [example.com, www.example.com]
    default: true
    tls: {{cert: "{main_cert}", key: "{main_key}"}}
    routes:
      - path: /
        proxy: {{upstream: app}}
      - path: /small
        max_body_size: 10k
        proxy: {{upstream: app}}
  - listen: ["127.0.0.1:{port}"]
    server_names: [static.example.net]
    tls: {{cert: "{other_cert}", key: "{other_key}"}}
    routes:
      - path: /
        respond: {{body: "static site\\n"}}
"""


@pytest.fixture
def edge(
    certs: Certs, origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> tuple[int, Proc]:
    origin_port = free_port()
    origin(origin_port, "app")
    port = free_port()
    proc = ferryman(_config(certs, port, origin_port), port)
    return port, proc


def _curl(certs: Certs, port: int, host: str, path: str, *args: str) -> tuple[str, str]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            str(certs.ca),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            "-w",
            "\n%{http_version} %{http_code}",
            *args,
            f"https://{host}:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    body, _, meta = out.stdout.rpartition("\n")
    return body, meta


def _s_client(port: int, *args: str) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input="",
        capture_output=True,
        encoding="latin-1",
        timeout=20,
    )
    return out.stdout + out.stderr


def test_curl_http2_through_tls(certs: Certs, edge: tuple[int, Proc]) -> None:
    port, proc = edge
    body, meta = _curl(certs, port, "example.com", "/hello?x=1", "--http2")
    assert meta == "2 200"
    seen = json.loads(body)
    assert seen["path"] == "/hello?x=1"
    assert seen["headers"]["x-forwarded-proto"] == "https"
    assert seen["headers"]["host"] == f"example.com:{port}"
    body, meta = _curl(certs, port, "static.example.net", "/", "--http1.1")
    assert (body, meta) == ("static site\n", "1.1 200")
    deadline = time.monotonic() + 5
    while "static.example.net" not in proc.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = proc.stdout()
    assert "GET /hello?x=1 200 HTTP/2.0 TLSv1.3 example.com" in log
    assert "GET / 200 HTTP/1.1 TLSv1.3 static.example.net" in log


def test_sni_picks_certificate_and_alpn_h2(edge: tuple[int, Proc]) -> None:
    port, _ = edge
    out = _s_client(port, "-servername", "static.example.net", "-alpn", "h2,http/1.1")
    assert "subject=CN = static.example.net" in out
    assert "ALPN protocol: h2" in out
    out = _s_client(port, "-servername", "www.example.com", "-alpn", "http/1.1")
    assert "subject=CN = example.com" in out
    assert "ALPN protocol: http/1.1" in out
    # An unknown name gets the default certificate.
    out = _s_client(port, "-servername", "unknown.test")
    assert "subject=CN = example.com" in out


def test_old_tls_refused(edge: tuple[int, Proc]) -> None:
    port, _ = edge
    # The client is allowed TLS 1.1 (security level 0) and offers it; the server refuses.
    out = _s_client(port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "Protocol  : TLSv1.1" in out
    assert "Cipher is (NONE)" in out
    out = _s_client(port, "-tls1_2")
    assert "Protocol  : TLSv1.2" in out
    assert "ECDHE" in out


def test_session_resumption(edge: tuple[int, Proc], tmp_path: Path) -> None:
    port, _ = edge
    sess = str(tmp_path / "sess.pem")
    first = _s_client(port, "-tls1_2", "-sess_out", sess)
    assert first.count("New, TLSv1.2") >= 1
    again = _s_client(port, "-tls1_2", "-sess_in", sess)
    assert "Reused, TLSv1.2" in again
    # TLS 1.3: a ticket arrives after the handshake, so stay connected a moment to get it.
    sess13 = str(tmp_path / "sess13.pem")
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-sess_out", sess13],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    client.communicate(b"", timeout=10)
    again = _s_client(port, "-tls1_3", "-sess_in", sess13)
    assert "Reused, TLSv1.3" in again


def test_httpx_http2_many_streams_one_connection(certs: Certs, edge: tuple[int, Proc]) -> None:
    port, _ = edge
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    with httpx.Client(http2=True, verify=ctx, base_url=f"https://127.0.0.1:{port}") as c:
        ext = {"sni_hostname": "example.com"}
        host = {"host": "example.com"}
        for i in range(20):
            r = c.get(f"/n/{i}", headers=host, extensions=ext)
            assert r.http_version == "HTTP/2"
            assert r.json()["path"] == f"/n/{i}"
        body = os.urandom(300_000)
        r = c.post("/upload", content=body, headers=host, extensions=ext)
        assert r.status_code == 200
        assert len(r.json()["body"]) == len(body)
        r = c.get("/dl?size=3000000", headers=host, extensions=ext)
        assert len(r.content) == 3_000_000
        r = c.post("/small", content=b"x" * 20000, headers=host, extensions=ext)
        assert r.status_code == 413
        r = c.get("/static", headers={"host": "static.example.net"}, extensions=ext)
        assert r.text == "static site\n"  # Host picks the server, as over HTTP/1.1


def test_concurrent_streams_interleave(certs: Certs, edge: tuple[int, Proc]) -> None:
    port, _ = edge
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    c = RawH2(port, tls=ctx, server_name="example.com")
    slow = c.request("/slow?delay=1", "example.com")
    fast = c.request("/fast", "example.com")
    status, _, body = c.response(fast, seconds=0.8)
    assert status == 200  # not held behind the slow stream
    assert json.loads(body)["path"] == "/fast"
    status, _, body = c.response(slow)
    assert status == 200
    c.close()


def test_graceful_shutdown_sends_goaway(certs: Certs, edge: tuple[int, Proc]) -> None:
    import h2.events

    port, proc = edge
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    idle = RawH2(port, tls=ctx, server_name="example.com")
    idle.read(0.1)
    busy = subprocess.Popen(
        [
            "curl", "-sS", "--http2", "--cacert", str(certs.ca),
            "--resolve", f"example.com:{port}:127.0.0.1", "-w", "\n%{http_version} %{http_code}",
            f"https://example.com:{port}/slow?delay=1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    time.sleep(0.5)
    proc.popen.terminate()
    idle.read(1.0)
    goaway = [e for e in idle.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == 0
    idle.close()
    out, _ = busy.communicate(timeout=10)
    assert out.endswith("2 200")  # the stream in flight was finished
    assert proc.popen.wait(10) == 0


def test_h2c_prior_knowledge(origin: Callable[..., Proc], ferryman: Callable[..., Proc]) -> None:
    origin_port = free_port()
    origin(origin_port, "app")
    port = free_port()
    ferryman(
        f"""
workers: 1
http2: {{h2c: true}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /
        proxy: {{url: "http://127.0.0.1:{origin_port}"}}
""",
        port,
    )
    for flag in ("--http2-prior-knowledge", "--http1.1"):
        out = subprocess.run(
            ["curl", "-sS", flag, "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/p"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        body, _, version = out.rpartition("\n")
        assert version == ("2" if "prior" in flag else "1.1")
        assert json.loads(body)["headers"]["x-forwarded-proto"] == "http"


def _check(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "f.yaml"
    path.write_text(config)
    return subprocess.run(
        [PYTHON, "-m", "ferryman", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=20,
    )


def _tls_server(cert: Path, key: Path, extra: str = "") -> str:
    return f"""
servers:
  - listen: ["127.0.0.1:{free_port()}"]
    server_names: [example.com]
    tls: {{cert: "{cert}", key: "{key}"{extra}}}
    routes: [{{path: /, respond: {{body: ok}}}}]
"""


def test_key_with_loose_permissions_refused(certs: Certs, tmp_path: Path) -> None:
    cert, key = certs.make("loose", "example.com")
    os.chmod(key, 0o644)
    out = _check(_tls_server(cert, key), tmp_path)
    assert out.returncode == 1
    assert f"{key}: the private key is readable by group or others (mode 0644)" in out.stderr


def test_key_not_matching_certificate_refused(certs: Certs, tmp_path: Path) -> None:
    cert, _ = certs.make("a", "example.com")
    _, other_key = certs.make("b", "example.com")
    out = _check(_tls_server(cert, other_key), tmp_path)
    assert out.returncode == 1
    assert "the key does not match the certificate" in out.stderr
    assert str(other_key) in out.stderr


def test_missing_certificate_auto_created(certs: Certs, tmp_path: Path) -> None:
    cert, key = tmp_path / "new" / "site.pem", tmp_path / "new" / "site.key"
    out = _check(_tls_server(cert, key), tmp_path)
    assert out.returncode == 1
    assert "cannot read" in out.stderr
    out = _check(_tls_server(cert, key, ", auto_create: true"), tmp_path)
    assert out.returncode == 0, out.stderr
    assert cert.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "ca" / "ca.pem").exists()


def test_cert_command(tmp_path: Path) -> None:
    out = subprocess.run(
        [PYTHON, "-m", "ferryman", "cert", "dev.test", "*.dev.test", "127.0.0.1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "FERRYMAN_CA_DIR": str(tmp_path / "ca"), "PYTHONPATH": str(ROOT)},
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "dev.test.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:dev.test, DNS:*.dev.test, IP Address:127.0.0.1" in text
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca" / "ca.pem"), "dev.test.pem"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert verify.stdout.strip() == "dev.test.pem: OK"


def test_settings_announced(certs: Certs, edge: tuple[int, Proc]) -> None:
    port, _ = edge
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    c = RawH2(port, tls=ctx, server_name="example.com")
    c.read(0.3)
    remote = c.conn.remote_settings
    assert remote.max_concurrent_streams == 128
    assert remote.max_header_list_size == 65536
    assert remote.initial_window_size == 1 << 20
    assert remote.enable_push == 0
    # The connection window was opened to 16 MiB at once, not left at 64 KiB.
    assert c.conn.outbound_flow_control_window == 16 << 20
    c.close()


def test_a_leading_dot_name_is_chosen_by_sni(certs: Certs) -> None:
    from ferryman.config.schema import Http2, Server
    from ferryman.server.tls import ListenerTls

    def server(names: list[str], stem: str) -> Server:
        cert, key = certs.make(stem, *[n.lstrip(".") for n in names])
        return Server.model_validate(
            {
                "listen": ["127.0.0.1:1"],
                "server_names": names,
                "tls": {"cert": str(cert), "key": str(key)},
                "routes": [{"path": "/", "respond": {"body": "ok"}}],
            }
        )

    tls = ListenerTls(
        "127.0.0.1:1", [server(["a.test"], "a"), server([".example.com"], "e")], Http2()
    )
    dotted = tls.lookup("example.com")
    assert dotted is not None and dotted is not tls.context
    assert tls.lookup("www.example.com") is dotted
    assert tls.lookup("EXAMPLE.com.") is dotted
    assert tls.lookup("notexample.com") is None
    assert tls.lookup("a.test") is tls.context
