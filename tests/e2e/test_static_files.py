"""The static handler over plain HTTP/1.1: big files, slow and vanishing clients, refusals."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.procs import Proc, free_port

BIG = 8 * 1024 * 1024


class Site:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.base = f"http://127.0.0.1:{port}"
        self.port = port
        self.big = (root / "big.bin").read_bytes()
        self.text = (root / "big.txt").read_bytes()


@pytest.fixture
def site(tmp_path: Path, ferryman: Callable[..., Proc]) -> Site:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "big.bin").write_bytes(os.urandom(BIG))
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(8000)]
    (root / "big.txt").write_text("".join(lines))
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (tmp_path / "secret.txt").write_text("top secret")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    os.mkfifo(root / "pipe")  # opening it must not block the server
    port = free_port()
    config = f"""
workers: 1
servers:
  - listen: ["127.0.0.1:{port}"]
    compression: {{types: [text/plain]}}
    response_headers: {{set: {{X-Site: static}}}}
    routes:
      - path: /files/
        static: {{alias: "{root}"}}
      - path: /listing/
        static: {{alias: "{root}", listing: true}}
      - path: /
        static: {{root: "{root}"}}
"""
    ferryman(config, port)
    return Site(root, port)


def test_big_file_whole_and_in_ranges(site: Site) -> None:
    with httpx.Client(base_url=site.base) as c:
        r = c.get("/files/big.bin")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(BIG)
        assert "transfer-encoding" not in r.headers
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(site.big).digest()
        part = c.get("/files/big.bin", headers={"range": "bytes=1000000-5999999"})
        assert part.status_code == 206
        assert part.content == site.big[1000000:6000000]
        multi = c.get("/files/big.bin", headers={"range": "bytes=0-99999,7000000-7199999"})
        assert multi.status_code == 206
        assert int(multi.headers["content-length"]) == len(multi.content)
        assert site.big[:100000] in multi.content
        assert site.big[7000000:7200000] in multi.content
        head = c.head("/big.bin")  # by ``root``: the URL path under the directory
        assert head.headers["content-length"] == str(BIG)
        assert head.content == b""


def test_big_text_is_compressed_while_streaming(site: Site) -> None:
    with httpx.Client(base_url=site.base) as c:
        r = c.get("/files/big.txt", headers={"accept-encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.content == site.text  # httpx decoded it
        raw = c.get("/files/big.txt", headers={"accept-encoding": "identity"})
        assert raw.headers["content-length"] == str(len(site.text))
        assert raw.content == site.text
    with socket.create_connection(("127.0.0.1", site.port)) as s:
        s.sendall(
            b"GET /files/big.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    body = _dechunk(data.split(b"\r\n\r\n", 1)[1])
    assert len(body) < len(site.text) // 5
    assert zlib.decompress(body, 31) == site.text


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += data[:size]
        data = data[size + 2 :]


def test_slow_client_does_not_hold_others(site: Site) -> None:
    """A client that stops reading a big file: its download waits, others are served."""
    slow = socket.create_connection(("127.0.0.1", site.port))
    try:
        slow.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # the socket buffers fill up; the rest of the file must wait
        t0 = time.monotonic()
        r = httpx.get(site.base + "/files/docs/index.html")
        assert r.status_code == 200
        assert time.monotonic() - t0 < 2
        got = b""
        while b"\r\n\r\n" not in got:
            got += slow.recv(65536)
        body = got.partition(b"\r\n\r\n")[2]
        while len(body) < BIG:
            body += slow.recv(1 << 20)
        assert body == site.big
    finally:
        slow.close()


def test_client_leaving_mid_download(site: Site) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", site.port)) as s:
            s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1000)
    r = httpx.get(site.base + "/files/big.bin")
    assert r.content == site.big


def test_refusals_and_directories(site: Site) -> None:
    with httpx.Client(base_url=site.base) as c:
        leak = c.get("/files/leak.txt")
        assert leak.status_code == 403
        assert b"top secret" not in leak.content
        assert leak.headers["x-site"] == "static"
        assert c.get("/files/empty/").status_code == 403  # no index, no listing
        moved = c.get("/files/docs?x=1")
        assert moved.status_code == 301
        assert moved.headers["location"] == "/files/docs/?x=1"
        assert c.get("/files/docs/").text == "<h1>docs</h1>"
        listing = c.get("/listing/")
        assert listing.status_code == 200
        assert 'href="big.bin"' in listing.text and 'href="docs/"' in listing.text
        assert c.post("/files/big.txt").status_code == 405
        assert c.get("/files/nothing-here").status_code == 404
        assert c.get("/files/pipe", timeout=3).status_code == 404
        assert c.get("/files/docs/").status_code == 200  # and the server still answers


def test_head_206_and_304_agree_with_a_compressed_get(site: Site) -> None:
    gz = {"accept-encoding": "gzip"}
    with httpx.Client(base_url=site.base) as c:
        got = c.get("/files/big.txt", headers=gz)
        assert got.headers["content-encoding"] == "gzip"
        head = c.head("/files/big.txt", headers=gz)
        for name in ("content-encoding", "vary", "etag"):
            assert head.headers.get(name) == got.headers.get(name), name
        assert head.headers["etag"].startswith("W/")
        assert "content-length" not in head.headers
        assert "accept-ranges" not in head.headers
        part = c.get("/files/big.txt", headers={**gz, "range": "bytes=0-9"})
        assert part.status_code == 206
        assert part.headers["vary"] == "Accept-Encoding"
        same = c.get("/files/big.txt", headers={**gz, "if-none-match": got.headers["etag"]})
        assert same.status_code == 304
        assert same.headers["vary"] == "Accept-Encoding"
        assert "content-type" not in same.headers
        # A type that is never compressed says no Vary, in a 200 or a 304.
        plain = c.get("/files/big.bin", headers=gz)
        assert "vary" not in plain.headers
        etag = plain.headers["etag"]
        assert "vary" not in c.get("/files/big.bin", headers={"if-none-match": etag}).headers
