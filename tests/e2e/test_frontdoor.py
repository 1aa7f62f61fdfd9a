"""Scenario 1 end to end: examples/frontdoor.yaml with real servers on its fixed ports.

The example runs as written, except that its certificates are made in a throwaway directory
under a throwaway CA (the test trusts that CA, so TLS is verified for real) and the static
directory is given as an absolute path, since the config is copied there.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
import yaml

from tests.support.procs import PYTHON, ROOT, Proc, start_origin, wait_port

EXAMPLE = ROOT / "examples" / "frontdoor.yaml"
CSS = (ROOT / "examples" / "static" / "app.css").read_bytes()
SITE = "https://example.com:8443"
SECURITY = {
    "x-frame-options": "SAMEORIGIN",
    "x-content-type-options": "nosniff",
    "x-xss-protection": "1; mode=block",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
}


class Stack:
    def __init__(self, ferryman: Proc, origins: dict[int, Proc], ca: Path) -> None:
        self.ferryman = ferryman
        self.origins = origins
        self.ca = ca
        self.ssl = ssl.create_default_context(cafile=str(ca))

    def client(self, http2: bool = True) -> httpx.Client:
        return httpx.Client(verify=self.ssl, http2=http2, timeout=10)

    def get(self, path: str, http2: bool = True, **kw: Any) -> httpx.Response:
        """A request to https://example.com:8443 (the name is sent by SNI and Host)."""
        with self.client(http2) as c:
            return c.get(
                "https://127.0.0.1:8443" + path,
                headers={"host": "example.com", **kw.pop("headers", {})},
                extensions={"sni_hostname": "example.com"},
                **kw,
            )

    def curl(self, path: str, *args: str) -> tuple[str, bytes]:
        """curl --http2: (head in lower case, body bytes)."""
        return _curl(self.ca, path, *args)

    def raw(self, target: bytes) -> bytes:
        """One HTTP/1.1 request sent as written (no client normalizes the path)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))  # httpx sets ALPN on its own
        with (
            socket.create_connection(("127.0.0.1", 8443), timeout=5) as s,
            ctx.wrap_socket(s, server_hostname="example.com") as tls,
        ):
            tls.sendall(
                b"GET " + target + b" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return data


def _curl(ca: Path, path: str, *args: str) -> tuple[str, bytes]:
    read, write = os.pipe()
    try:
        proc = subprocess.Popen(
            [
                "curl",
                "-sS",
                "--http2",
                "--cacert",
                str(ca),
                "-D",
                f"/dev/fd/{write}",
                "--resolve",
                "example.com:8443:127.0.0.1",
                *args,
                SITE + path,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write,),
        )
        os.close(write)
        write = -1
        body, err = proc.communicate(timeout=20)
        head = os.read(read, 1 << 16).decode("latin-1")
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    assert proc.returncode == 0, err
    return head.lower(), body


def _config(tmp: Path) -> Path:
    """The example, with its certificates in ``tmp`` and its static directory absolute."""
    data = yaml.safe_load(EXAMPLE.read_text())
    for server in data["servers"]:
        tls = server.get("tls")
        if tls is not None:
            for key in ("cert", "key"):
                tls[key] = str(tmp / "certs" / Path(tls[key]).name)
        for route in server["routes"]:
            if "static" in route:
                route["static"]["alias"] = str(ROOT / "examples" / route["static"]["alias"])
    path = tmp / "frontdoor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("frontdoor")
    started: list[Proc] = []
    try:
        origins = {}
        for port in (3001, 3002, 3003, 8081, 8082):
            origins[port] = start_origin(port, f"o{port}")
            started.append(origins[port])
        proc = Proc(
            [PYTHON, "-m", "ferryman", "run", "-c", str(_config(tmp)), "--workers", "1"],
            "ferryman",
            env={"FERRYMAN_CA_DIR": str(tmp / "ca")},
        )
        started.append(proc)
        try:
            wait_port("127.0.0.1", 8443, proc=proc.popen)
            wait_port("127.0.0.1", 8080, proc=proc.popen)
        except Exception:
            raise RuntimeError(f"ferryman did not start: {proc.stderr()}") from None
        yield Stack(proc, origins, tmp / "ca" / "ca.pem")
    finally:
        for p in reversed(started):
            p.stop()


def assert_security(headers: httpx.Headers | dict[str, str]) -> None:
    for name, value in SECURITY.items():
        assert headers.get(name) == value, name


def test_plain_port_redirects_every_request(stack: Stack) -> None:
    with httpx.Client(base_url="http://127.0.0.1:8080") as c:
        for method, path in (
            ("GET", "/"),
            ("GET", "/a/b?c=1&d=2"),
            ("POST", "/api/orders"),
            ("HEAD", "/static/app.css"),
            ("GET", "/health"),
        ):
            r = c.request(method, path, headers={"host": "example.com:8080"})
            assert r.status_code == 301, (method, path)
            assert r.headers["location"] == "https://example.com" + path


def test_routes_reach_their_upstreams(stack: Stack) -> None:
    api = {stack.get(f"/api/items/{i}").headers["x-origin"] for i in range(6)}
    assert api <= {"o8081", "o8082"} and api
    site = [stack.get(f"/page/{i}").headers["x-origin"] for i in range(16)]
    assert set(site) == {"o3001", "o3002"}  # the backup only serves when both are down
    seen = stack.get("/api/who").json()["headers"]
    assert seen["host"] == "example.com"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-real-ip"] == "127.0.0.1"


def test_security_headers_on_answers_and_errors(stack: Stack) -> None:
    cases = {
        "/health": 200,
        "/": 200,
        "/static/app.css": 200,
        "/static/missing.css": 404,
        "/static/": 200,
        "/anything?status=404": 404,
        "/anything?status=500": 500,
    }
    for path, status in cases.items():
        r = stack.get(path)
        assert r.status_code == status, path
        assert_security(r.headers)
    r = stack.get(
        "/static/app.css", headers={"if-none-match": stack.get("/static/app.css").headers["etag"]}
    )
    assert r.status_code == 304
    assert_security(r.headers)


def test_security_headers_on_malformed_requests(stack: Stack) -> None:
    """Requests refused before any route is chosen get them too (the server's filters)."""
    answer = stack.raw(b"/has a space")
    assert answer.startswith(b"HTTP/1.1 400 ")
    for name, value in SECURITY.items():
        assert f"{name}: {value}".encode() in answer


def test_health(stack: Stack) -> None:
    r = stack.get("/health")
    assert r.status_code == 200
    assert r.text == "OK\n"
    assert r.headers["content-type"] == "text/plain"
    stack.get("/logged-marker")
    deadline = time.monotonic() + 5
    while "/logged-marker" not in stack.ferryman.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = stack.ferryman.stdout()
    assert "/logged-marker" in log
    assert '"GET /health HTTP/2.0"' not in log  # the redirecting port logs its own 301


def test_gzip_above_min_length_only(stack: Stack) -> None:
    big = stack.get("/api/data?json=5000", headers={"accept-encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in big.headers["vary"].lower()
    assert len(json.loads(big.content)["data"]) == 5000 - 12
    small = stack.get("/api/data?json=500", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers
    assert small.headers["content-length"] == "500"
    # Not a type the example compresses, however big.
    blob = stack.get("/api/data?size=50000&type=image/png", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in blob.headers
    assert len(blob.content) == 50000
    # Streamed (chunked) from the upstream: no length known, so it compresses.
    streamed = stack.get("/data?json=100000&chunked=1", headers={"accept-encoding": "gzip"})
    assert streamed.headers["content-encoding"] == "gzip"
    assert len(streamed.json()["data"]) == 100000 - 12


def test_brotli_when_asked(stack: Stack) -> None:
    r = stack.get("/api/data?json=5000", headers={"accept-encoding": "br;q=1, gzip;q=0.5"})
    assert r.headers["content-encoding"] == "br"
    assert len(r.json()["data"]) == 5000 - 12


def test_gzip_with_curl(stack: Stack) -> None:
    head, body = stack.curl("/api/data?json=5000", "-H", "accept-encoding: gzip")
    assert head.startswith("http/2 200")
    assert "content-encoding: gzip" in head
    assert len(json.loads(gzip.decompress(body))["data"]) == 5000 - 12
    head, body = stack.curl("/static/app.css", "--compressed")
    assert "content-encoding: gzip" in head or "content-encoding: br" in head
    assert body == CSS


def test_static_file_headers(stack: Stack) -> None:
    r = stack.get("/static/app.css", headers={"accept-encoding": "identity"})
    assert r.status_code == 200
    assert r.content == CSS
    assert len(CSS) > 1000
    assert r.headers["content-type"] == "text/css; charset=utf-8"
    assert r.headers["content-length"] == str(len(CSS))
    assert r.headers["cache-control"] == "max-age=2592000, public, immutable"
    expires = parsedate_to_datetime(r.headers["expires"]).timestamp()
    assert abs(expires - (time.time() + 30 * 86400)) < 60
    mtime = int((ROOT / "examples" / "static" / "app.css").stat().st_mtime)
    assert parsedate_to_datetime(r.headers["last-modified"]).timestamp() == mtime
    assert r.headers["etag"].startswith('"')
    index = stack.get("/static/")
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<title>" in index.content
    again = stack.get("/static/app.css", http2=False, headers={"accept-encoding": "identity"})
    assert again.headers["etag"] == r.headers["etag"]


def test_static_conditional_get(stack: Stack) -> None:
    etag = stack.get("/static/app.css", headers={"accept-encoding": "identity"}).headers["etag"]
    r = stack.get("/static/app.css", headers={"if-none-match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    # A gzip answer's tag is weak; sending it back still matches (weak comparison).
    gz = stack.get("/static/app.css", headers={"accept-encoding": "gzip"})
    assert gz.headers["etag"] == "W/" + etag
    assert (
        stack.get("/static/app.css", headers={"if-none-match": gz.headers["etag"]}).status_code
        == 304
    )
    since = stack.get("/static/app.css").headers["last-modified"]
    assert stack.get("/static/app.css", headers={"if-modified-since": since}).status_code == 304
    changed = stack.get("/static/app.css", headers={"if-none-match": '"other"'})
    assert changed.status_code == 200
    head, body = stack.curl("/static/app.css", "-H", f"if-none-match: {etag}")
    assert head.startswith("http/2 304")
    assert body == b""


def test_static_ranges(stack: Stack) -> None:
    r = stack.get("/static/app.css", headers={"range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == CSS[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(CSS)}"
    tail = stack.get("/static/app.css", headers={"range": "bytes=-50"}, http2=False)
    assert tail.status_code == 206 and tail.content == CSS[-50:]
    multi = stack.get("/static/app.css", headers={"range": "bytes=0-4,100-104"})
    assert multi.status_code == 206
    ctype = multi.headers["content-type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    parts = multi.content.split(b"--" + boundary)
    assert parts[-1].strip() == b"--"
    assert parts[1].endswith(b"\r\n\r\n" + CSS[0:5] + b"\r\n")
    assert b"content-range: bytes 100-104/" in parts[2]
    bad = stack.get("/static/app.css", headers={"range": f"bytes={len(CSS) + 10}-"})
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{len(CSS)}"
    stale = stack.get("/static/app.css", headers={"range": "bytes=0-9", "if-range": '"old"'})
    assert stale.status_code == 200 and stale.content == CSS
    head, body = stack.curl("/static/app.css", "-r", "0-99")
    assert head.startswith("http/2 206")
    assert body == CSS[:100]


@pytest.mark.parametrize(
    "target",
    [
        b"/static/../../../../etc/passwd",
        b"/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/static/%2E%2E%2F%2E%2E%2Ffrontdoor.yaml",
        b"/static/..%2f..%2fREADME.md",
        b"/static/app.css%00.png",
        b"/static/.hidden",
    ],
)
def test_traversal_refused(stack: Stack, target: bytes) -> None:
    answer = stack.raw(target)
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 403, 404), answer[:200]
    assert b"root:" not in answer and b"servers:" not in answer and b"Ferryman" not in answer
    for name, value in SECURITY.items():
        assert f"{name}: {value}".encode() in answer


def s_client(stack: Stack, *args: str) -> str:
    done = subprocess.run(
        ["openssl", "s_client", "-connect", "127.0.0.1:8443", "-CAfile", str(stack.ca), *args],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    return (done.stdout + done.stderr).decode("latin-1")


def test_tls_by_openssl(stack: Stack) -> None:
    main = s_client(stack, "-servername", "www.example.com", "-alpn", "h2,http/1.1")
    assert "subject=CN = example.com" in main
    assert "ALPN protocol: h2" in main
    assert "Verify return code: 0 (ok)" in main
    other = s_client(stack, "-servername", "static.example.net")
    assert "subject=CN = static.example.net" in other
    assert "Verify return code: 0 (ok)" in other
    unknown = s_client(stack, "-servername", "unknown.example.org")
    assert "subject=CN = example.com" in unknown  # the default server's certificate
    # SECLEVEL=0 lets OpenSSL 3 offer TLS 1.1 at all: the refusal must come from the server.
    old = s_client(stack, "-servername", "example.com", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert "no protocols available" not in old
    assert "Cipher is (NONE)" in old or "alert" in old.lower()
    assert "subject=CN" not in old


def test_websocket_over_tls(stack: Stack) -> None:
    async def talk() -> list[str]:
        ctx = ssl.create_default_context(cafile=str(stack.ca))
        async with websockets.connect(
            "wss://127.0.0.1:8443/ws/chat", ssl=ctx, server_hostname="example.com"
        ) as ws:
            got = []
            for msg in ("hello", "x" * 70000):
                await ws.send(msg)
                got.append(str(await ws.recv()))
            return got

    assert asyncio.run(talk()) == ["hello", "x" * 70000]


def test_502_when_the_api_is_down(stack: Stack) -> None:
    """Last in the file: it stops the API servers."""
    for port in (8081, 8082):
        stack.origins[port].stop()
    r = stack.get("/api/items/1")
    assert r.status_code == 502
    assert r.json()["error"] == "Bad Gateway"
    assert_security(r.headers)
    assert stack.get("/").status_code == 200
