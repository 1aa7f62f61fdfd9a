"""The HTTP/1.1 proxy's behaviour end to end, on free ports with a real origin."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.procs import PYTHON, ROOT, Proc, free_port


def config(port: int, *origins: int, extra: str = "", route_extra: str = "") -> str:
    servers = "\n".join(f"      - address: 127.0.0.1:{p}" for p in origins)
    return f"""
workers: 1
shutdown_timeout: 10s
trusted_proxies: ["10.0.0.0/8"]
log:
  access: {{format: json}}
{extra}
upstreams:
  app:
    keepalive: 8
    retry: {{tries: 2, when: [error, timeout, http_502]}}
    servers:
{servers}
servers:
  - listen: ["127.0.0.1:{port}", "[::1]:{port}"]
    default: true
    routes:
      - path: /slowread/
        proxy: {{upstream: app, timeouts: {{read: 1s}}}}
      - path: /
        proxy: {{upstream: app}}
{route_extra}
"""


@pytest.fixture
def setup(origin: Callable[..., Proc], ferryman: Callable[..., Proc]) -> tuple[str, Proc, Proc]:
    oport = free_port()
    o = origin(oport, "app")
    port = free_port()
    f = ferryman(config(port, oport), port)
    return f"http://127.0.0.1:{port}", f, o


def raw(port: int, data: bytes, until: bytes = b"", timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while not (until and out.count(until[:12]) >= until.count(until[:12]) and until in out):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))


def read_until(s: socket.socket, n: int) -> int:
    """Read until ``n`` bytes arrived or the peer closed; how many arrived."""
    s.settimeout(5)
    got = 0
    while got < n:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


def test_keepalive_and_pipelining_answer_in_order(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    port = int(base.rsplit(":", 1)[1])
    reqs = b"".join(
        b"GET /p%d?delay=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (i, b"0.2" if i == 0 else b"0")
        for i in range(3)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(reqs + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    paths = [
        json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
        for part in out.split(b"HTTP/1.1 200 OK")[1:]
    ]
    assert paths == ["/p0?delay=0.2", "/p1?delay=0", "/p2?delay=0", "/last"]


def test_forwarded_headers_and_trusted_proxies(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    seen = httpx.get(base + "/h", headers={"X-Forwarded-For": "1.2.3.4"}).json()["headers"]
    assert seen["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"


def test_hop_by_hop_headers_stripped_both_ways(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    r = httpx.get(
        base + "/h",
        headers={
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "TE": "trailers",
        },
    )
    seen = r.json()["headers"]
    for name in ("x-secret", "keep-alive", "proxy-authorization", "te"):
        assert name not in seen, name


def test_post_bodies_stream_both_framings(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    body = b"a" * 300_000
    r = httpx.post(base + "/echo", content=body, headers={"content-type": "text/plain"})
    assert r.json()["body"] == body.decode()

    def gen() -> object:
        for _ in range(10):
            yield b"b" * 1000

    r = httpx.post(base + "/echo", content=gen())  # chunked
    assert r.json()["body"] == "b" * 10_000
    assert r.json()["headers"].get("transfer-encoding") == "chunked"


def test_expect_100_continue(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    out = subprocess.run(
        ["curl", "-s", "-H", "Expect: 100-continue", "--data-binary", "x" * 2000, base + "/e"],
        capture_output=True,
        check=True,
        timeout=10,
    ).stdout
    assert json.loads(out)["body"] == "x" * 2000
    assert "expect" not in json.loads(out)["headers"]


def test_head_204_304_and_chunked_or_close_delimited(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    with httpx.Client(base_url=base) as c:
        r = c.head("/x?size=5000")
        assert r.status_code == 200 and r.headers["content-length"] == "5000" and r.content == b""
        assert c.get("/x?status=204").status_code == 204
        assert c.get("/x?status=304").status_code == 304
        r = c.get("/x?size=100000&chunked=1")
        assert r.content == b"x" * 100_000
        r = c.get("/x?size=70000&close=1")
        assert r.content == b"x" * 70_000
        assert c.get("/x?size=10").content == b"x" * 10  # the connection is still good


def test_read_timeout_is_504_and_logged(setup: tuple[str, Proc, Proc]) -> None:
    base, f, _ = setup
    t = time.monotonic()
    r = httpx.get(base + "/slowread/x?delay=3", timeout=10)
    assert r.status_code == 504
    assert time.monotonic() - t < 2.5
    assert r.json()["error"] == "Gateway Timeout"
    time.sleep(0.2)
    line = [json.loads(x) for x in f.stdout().splitlines() if "slowread" in x][-1]
    assert line["status"] == 504 and "within 1s" in line["error"]


def test_ipv6_listener(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    port = base.rsplit(":", 1)[1]
    r = httpx.get(f"http://[::1]:{port}/v6")
    assert r.status_code == 200 and r.json()["path"] == "/v6"


def test_dead_peer_retried_and_post_not_replayed(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    good = free_port()
    dead = free_port()  # nothing listens there
    origin(good, "good")
    port = free_port()
    ferryman(config(port, dead, good), port)
    base = f"http://127.0.0.1:{port}"
    for _ in range(4):
        assert httpx.get(base + "/r").json()["origin"] == "good"
    # A POST whose body went out to an upstream that then failed is not replayed: 502.
    bad_port = free_port()
    killer = socket.create_server(("127.0.0.1", bad_port))

    def accept_and_drop() -> None:
        conn, _ = killer.accept()
        conn.recv(65536)
        conn.close()

    threading.Thread(target=accept_and_drop, daemon=True).start()
    port2 = free_port()
    ferryman(config(port2, bad_port, good), port2)
    got = []
    for _ in range(2):
        got.append(httpx.post(f"http://127.0.0.1:{port2}/once", content=b"pay").status_code)
    assert 502 in got  # the one that hit the dropping peer was not sent elsewhere
    killer.close()


def test_slow_client_does_not_make_the_proxy_buffer(setup: tuple[str, Proc, Proc]) -> None:
    base, f, _ = setup
    port = int(base.rsplit(":", 1)[1])

    before = rss_kib(f.pid)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /big?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.5)  # read nothing: the proxy must stop reading the upstream
        grown = rss_kib(f.pid) - before
        got = read_until(s, 50_000_000)
    assert grown < 20_000, f"RSS grew {grown} kB while the client read nothing"
    assert got > 50_000_000  # the whole body (and its head) arrived once the client read


def test_graceful_shutdown_finishes_in_flight(setup: tuple[str, Proc, Proc]) -> None:
    base, f, _ = setup
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.get(base + "/s?delay=1", timeout=10)))
    t.start()
    time.sleep(0.3)
    f.popen.send_signal(signal.SIGTERM)
    t.join()
    assert result[0].status_code == 200
    assert f.popen.wait(10) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/after")


def test_workers_share_the_port(origin: Callable[..., Proc], ferryman: Callable[..., Proc]) -> None:
    oport = free_port()
    origin(oport, "app")
    port = free_port()
    f = ferryman(config(port, oport), port, workers=2)
    pids = set()
    for _ in range(40):
        with httpx.Client() as c:  # a new connection each time
            assert c.get(f"http://127.0.0.1:{port}/w").status_code == 200
    out = subprocess.run(["pgrep", "-P", str(f.pid)], capture_output=True, text=True).stdout
    pids = {int(x) for x in out.split()}
    assert len(pids) == 2
    f.popen.send_signal(signal.SIGTERM)
    assert f.popen.wait(10) == 0


def test_cli_check_and_quick_proxy(
    origin: Callable[..., Proc], procs: list[Proc], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "servers:\n  - listen: ['127.0.0.1:1']\n    routes:\n      - path: /\n"
        "        proxy: {upstream: x}\n"
    )
    r = subprocess.run(
        [PYTHON, "-m", "ferryman", "check", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert "bad.yaml:5: servers.0.routes.0.proxy.upstream: unknown upstream 'x'" in r.stderr
    assert "Traceback" not in r.stderr
    ok = subprocess.run(
        [PYTHON, "-m", "ferryman", "check", str(ROOT / "examples" / "gateway.yaml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "proxy -> users" in ok.stdout
    oport = free_port()
    origin(oport, "quick")
    port = free_port()
    p = Proc(
        [
            PYTHON,
            "-m",
            "ferryman",
            "proxy",
            "--listen",
            f"127.0.0.1:{port}",
            "--to",
            f"http://127.0.0.1:{oport}",
        ],
        "quick",
    )
    procs.append(p)
    from tests.support.procs import wait_port

    wait_port("127.0.0.1", port, proc=p.popen)
    assert httpx.get(f"http://127.0.0.1:{port}/q").json()["origin"] == "quick"


def test_host_modes_trusted_proxy_rfc7239_and_html_errors(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    oport = free_port()
    origin(oport, "app")
    port = free_port()
    ferryman(
        f"""
workers: 1
trusted_proxies: ["127.0.0.1"]
limits: {{max_connections: 3}}
upstreams:
  app: {{servers: [{{address: "127.0.0.1:{oport}"}}]}}
servers:
  - listen: ["127.0.0.1:{port}"]
    error_format: html
    routes:
      - path: /changed/
        proxy: {{upstream: app, host: upstream, forwarded: true}}
      - path: /named/
        proxy: {{url: "http://127.0.0.1:{oport}", host: internal.example}}
      - path: /down/
        proxy: {{url: "http://127.0.0.1:{free_port()}"}}
      - path: /
        proxy: {{upstream: app}}
""",
        port,
    )
    base = f"http://127.0.0.1:{port}"
    seen = httpx.get(base + "/changed/x", headers={"X-Forwarded-For": "203.0.113.9"}).json()
    assert seen["headers"]["host"] == f"127.0.0.1:{oport}"
    assert seen["headers"]["x-real-ip"] == "203.0.113.9"  # the peer is trusted
    assert seen["headers"]["forwarded"] == f"for=127.0.0.1;host=127.0.0.1:{port};proto=http"
    assert httpx.get(base + "/named/x").json()["headers"]["host"] == "internal.example"
    assert httpx.get(base + "/plain").json()["headers"]["host"] == f"127.0.0.1:{port}"
    r = httpx.get(base + "/down/x")
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in r.text
    # A worker holds at most max_connections client connections; the next is closed.
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=3) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(100) == b""
    finally:
        for s in held:
            s.close()


def test_a_client_that_half_closes_inside_its_body_is_let_go(
    setup: tuple[str, Proc, Proc],
) -> None:
    base, _, _ = setup
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)
        s.shutdown(socket.SHUT_WR)  # the body can never be whole now
        t = time.monotonic()
        assert s.recv(65536) == b""  # closed, not left until the body timeout
        assert time.monotonic() - t < 3


def test_upstream_connection_not_reused_after_an_incomplete_exchange(
    setup: tuple[str, Proc, Proc],
) -> None:
    base, _, _ = setup
    port = int(base.rsplit(":", 1)[1])
    # The client leaves in the middle of a large body: that upstream connection must not be
    # lent again with the rest of the body still in it.
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /big?size=5000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(1000)
    with httpx.Client(base_url=base) as c:
        for i in range(20):
            r = c.get(f"/after/{i}")
            assert r.status_code == 200 and r.json()["path"] == f"/after/{i}"


def test_send_timeout_when_the_upstream_stops_reading(ferryman: Callable[..., Proc]) -> None:
    sink = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(sink.accept()[0]), daemon=True).start()
    port = free_port()
    ferryman(
        f"""
workers: 1
limits: {{max_body_size: 100m}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - path: /
        proxy: {{url: "http://127.0.0.1:{sink.getsockname()[1]}", timeouts: {{send: 1s}}}}
""",
        port,
    )
    t = time.monotonic()
    r = httpx.post(f"http://127.0.0.1:{port}/up", content=b"z" * 50_000_000, timeout=20)
    assert r.status_code == 504
    assert time.monotonic() - t < 10
    for conn in held:
        conn.close()
    sink.close()


def test_client_that_stops_reading_is_let_go(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    oport = free_port()
    origin(oport, "app")
    port = free_port()
    f = ferryman(config(port, oport, extra="limits: {send_timeout: 1s}"), port)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /big?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(2.5)  # read nothing
        s.settimeout(5)
        got = 0
        try:
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
    assert got < 50_000_000  # cut off, not completed
    time.sleep(0.2)
    assert "took no bytes for 1s" in f.stdout()


def test_bounded_response_buffer_frees_the_upstream_early(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    oport = free_port()
    origin(oport, "app")
    port = free_port()
    f = ferryman(
        config(
            port,
            oport,
            route_extra="      - path: /buffered/\n        proxy: {upstream: app, buffer: 4m}\n",
        ),
        port,
    )

    def stalled(path: str) -> int:
        before = rss_kib(f.pid)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(1.0)  # read nothing
            grown = rss_kib(f.pid) - before
            got = read_until(s, 20_000_000)
        assert got > 20_000_000
        return grown

    unbuffered = stalled("/plain?size=20000000")
    buffered = stalled("/buffered/x?size=20000000")
    assert unbuffered < 2_000, unbuffered  # kB: the default keeps little
    assert 2_500 < buffered < 12_000, buffered  # about 4 MiB held, and no more


def test_connection_tokens_cannot_strip_framing_or_host(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    port = int(base.rsplit(":", 1)[1])
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: internal\r\n\r\n"
    out = raw(
        port,
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: content-length, host\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled),
        until=b"}",
    )
    seen = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert seen["path"] == "/a"
    assert seen["body"] == smuggled.decode()  # the body stayed a body
    assert seen["headers"]["content-length"] == str(len(smuggled))
    assert seen["headers"]["host"] == "x"


def test_absolute_form_target_sets_the_host_sent_upstream(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    port = int(base.rsplit(":", 1)[1])
    out = raw(port, b"GET http://public.test/a HTTP/1.1\r\nHost: internal.test\r\n\r\n", b"}")
    seen = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert seen["headers"]["host"] == "public.test"
    assert seen["path"] == "/a"


def test_forwarded_from_an_untrusted_client_is_dropped(setup: tuple[str, Proc, Proc]) -> None:
    base, _, _ = setup
    seen = httpx.get(base + "/f", headers={"Forwarded": "for=9.9.9.9"}).json()["headers"]
    assert "forwarded" not in seen


def test_connection_reads_on_after_an_early_error(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    port = free_port()
    ferryman(config(port, free_port()), port)  # the only upstream is down
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        assert c.post("/p", content=b"q" * 100_000).status_code == 502
        assert c.post("/p", content=b"q" * 10).status_code == 502  # same connection, answered


def test_read_timeout_does_not_count_time_the_client_held_us(
    setup: tuple[str, Proc, Proc],
) -> None:
    base, _, _ = setup
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        # /slowread/ has a 1 s read timeout; the client reads nothing for 2.5 s.
        s.sendall(b"GET /slowread/big?size=20000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(2.5)
        got = read_until(s, 20_000_000)
    assert got > 20_000_000


def test_access_log_to_a_file_with_a_template(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc], tmp_path: Path
) -> None:
    oport = free_port()
    origin(oport, "app")
    port = free_port()
    log_path = tmp_path / "logs" / "access.log"
    ferryman(
        f"""
workers: 1
log:
  access:
    path: "{log_path}"
    format: "$method $uri -> $upstream_addr $status $upstream_status $route"
upstreams:
  app: {{servers: [{{address: "127.0.0.1:{oport}"}}]}}
servers:
  - listen: ["127.0.0.1:{port}"]
    routes:
      - {{path: /, proxy: {{upstream: app}}}}
""",
        port,
    )
    httpx.get(f"http://127.0.0.1:{port}/logged?x=1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not log_path.exists():
        time.sleep(0.05)
    time.sleep(0.2)
    line = f"GET /logged -> 127.0.0.1:{oport} 200 200 servers.0.routes.0:/\n"
    assert log_path.read_text() == line


def test_no_route_follows_the_servers_error_format(ferryman: Callable[..., Proc]) -> None:
    port = free_port()
    ferryman(
        f"""
workers: 1
servers:
  - listen: ["127.0.0.1:{port}"]
    error_format: html
    routes:
      - {{path: /only, match: exact, respond: {{body: "x"}}}}
""",
        port,
    )
    r = httpx.get(f"http://127.0.0.1:{port}/elsewhere")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "Route not found" in r.text
