"""Scenario 3 end to end: examples/forward.yaml driven by real clients.

The proxy listens where the example says (127.0.0.1:3128 HTTP, 127.0.0.1:1080 SOCKS5) and
resolves ``*.example.test`` to 127.0.0.1 through its hosts table. Origins run on loopback;
the HTTPS one on 127.0.0.1:443 (the only CONNECT port the example allows) when that port can
be bound, else on a free port added to a copy of the example's ``connect_ports``. Denied
destinations are only ever other loopback addresses (127.0.0.2).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests
import trustme
import yaml
from requests.auth import HTTPProxyAuth

from ferryman.forward import shacrypt
from tests.support.procs import (
    PYTHON,
    ROOT,
    Proc,
    free_port,
    start_ferryman,
    start_origin,
    wait_port,
)

PROXY = "http://127.0.0.1:3128"
AUTH_PROXY = "http://alice:wonderland@127.0.0.1:3128"
SOCKS = "127.0.0.1:1080"
NO_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class Env:
    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.dir = Path(tempfile.mkdtemp(prefix="ferryman-forward-"))
        self.port = 0  # the plain origin, on 127.0.0.1 and ::1
        self.closed_port = 0  # nothing listens there; in connect_ports
        self.https = ""  # base URL of the HTTPS origin
        self.https_port = 443
        self.ipv6 = True
        self.ca = ""
        self.proxy: Proc | None = None

    def log(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 5.0, count: int = 1
    ) -> list[dict[str, str]]:
        """Access-log records of the proxy that satisfy ``predicate`` (waits for ``count``)."""
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        while True:
            # A line still being written is not a record yet.
            lines = self.proxy.stdout().split("\n")[:-1]
            found = [r for r in map(_parse, lines) if r and predicate(r)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _parse(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    rest = line.strip()
    while rest:
        key, sep, rest = rest.partition("=")
        if not sep:
            return {}
        if rest.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(rest)
            rest = rest[end:].lstrip()
        else:
            value, _, rest = rest.partition(" ")
        out[key] = str(value)
    return out


def _can_bind(port: int) -> bool:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    try:
        e.port = free_port()
        e.procs.append(start_origin(e.port, "api"))
        try:
            e.procs.append(start_origin(e.port, "api6", host="::1"))
        except (OSError, RuntimeError, TimeoutError):
            e.ipv6 = False  # a machine without IPv6 loopback: the IPv6 checks are skipped
        ca = trustme.CA()
        cert = ca.issue_cert("secure.example.test", "*.example.test")
        e.ca = str(e.dir / "ca.pem")
        ca.cert_pem.write_to_path(e.ca)
        cert_path, key_path = e.dir / "cert.pem", e.dir / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        https_port = 443 if _can_bind(443) else free_port()
        # SOCKS connects are tunnels that connect_ports limits, like CONNECT: a copy of the
        # example lets them reach the plain origin and a port where nothing listens.
        e.closed_port = free_port()
        data = yaml.safe_load((ROOT / "examples" / "forward.yaml").read_text())
        data["forward"]["connect_ports"] = sorted({443, https_port, e.port, e.closed_port})
        data["forward"]["auth"]["htpasswd"] = str(ROOT / "examples" / "htpasswd")
        config = e.dir / "forward.yaml"
        config.write_text(yaml.safe_dump(data))
        tls = Proc(
            [
                PYTHON,
                "-m",
                "tests.support.tls_origin",
                "--listen",
                f"127.0.0.1:{https_port}",
                "--cert",
                str(cert_path),
                "--key",
                str(key_path),
            ],
            "tls-origin",
        )
        e.procs.append(tls)
        wait_port("127.0.0.1", https_port, proc=tls.popen)
        e.https = "https://secure.example.test" + ("" if https_port == 443 else f":{https_port}")
        e.https_port = https_port
        e.proxy = start_ferryman(config, ("127.0.0.1", 3128))
        e.procs.append(e.proxy)
        wait_port("127.0.0.1", 1080, proc=e.proxy.popen)
        yield e
    finally:
        for p in reversed(e.procs):
            p.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NO_PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_requests_http_and_https_with_credentials_in_url(env: Env) -> None:
    proxies = {"http": AUTH_PROXY, "https": AUTH_PROXY}
    r = requests.get(
        f"http://api.example.test:{env.port}/plain?q=1",
        proxies=proxies,
        headers={"Proxy-Connection": "keep-alive"},
        timeout=10,
    )
    assert r.status_code == 200
    seen = r.json()
    assert seen["path"] == "/plain?q=1"
    assert seen["headers"]["host"] == f"api.example.test:{env.port}"
    assert seen["headers"]["via"] == "1.1 ferryman"
    for hop in ("proxy-authorization", "proxy-connection"):
        assert hop not in seen["headers"]
    assert r.headers["via"] == "1.1 ferryman"

    r = requests.get(env.https + "/secure", proxies=proxies, verify=env.ca, timeout=10)
    assert r.status_code == 200
    assert r.json()["origin"] == "secure" and r.json()["path"] == "/secure"
    assert "via" not in r.json()["headers"]  # end to end TLS: the proxy sees only bytes
    del r  # a tunnel is logged when it closes: let requests close its connection
    gc.collect()

    [plain] = env.log(lambda x: x["target"].endswith("/plain?q=1"))
    assert plain["user"] == "alice" and plain["status"] == "200" and plain["method"] == "GET"
    assert plain["dest"] == f"api.example.test:{env.port}"
    assert int(plain["down"]) > 200
    tunnels = env.log(lambda x: x["method"] == "CONNECT" and x["dest"].startswith("secure."))
    assert tunnels and tunnels[-1]["status"] == "200"
    assert int(tunnels[-1]["up"]) > 200 and int(tunnels[-1]["down"]) > 200  # TLS both ways
    assert tunnels[-1]["upstream"].startswith("127.0.0.1:")


def test_http_proxy_auth_object(env: Env) -> None:
    r = requests.get(
        f"http://api.example.test:{env.port}/httpproxyauth",
        proxies={"http": PROXY},
        auth=HTTPProxyAuth("alice", "wonderland"),
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["path"] == "/httpproxyauth"
    bob = HTTPProxyAuth("bob", "builder")  # a SHA-512 crypt user
    r = requests.get(f"http://api.example.test:{env.port}/bob", proxies={"http": PROXY}, auth=bob)
    assert r.status_code == 200
    assert env.log(lambda x: x["target"].endswith("/bob"))[0]["user"] == "bob"


def test_large_plain_http_bodies_through_the_forward_proxy(env: Env) -> None:
    # Spliced from the origin's socket to the client's, like a reverse-proxied body.
    with requests.Session() as session:
        for size in (70_000, 3_000_000, 5):
            url = f"http://api.example.test:{env.port}/big?size={size}"
            r = session.get(url, proxies={"http": AUTH_PROXY}, timeout=10)
            assert r.status_code == 200 and r.content == b"x" * size


def test_wrong_or_missing_password_gets_407(env: Env) -> None:
    url = f"http://api.example.test:{env.port}/wrong-password"
    for proxy in ("http://alice:nope@127.0.0.1:3128", PROXY, "http://mallory:x@127.0.0.1:3128"):
        r = requests.get(url, proxies={"http": proxy}, timeout=10)
        assert r.status_code == 407
        assert r.headers["proxy-authenticate"] == (
            'Basic realm="Ferryman office proxy", charset="UTF-8"'
        )
    with pytest.raises(requests.exceptions.ProxyError, match="407"):
        requests.get(
            env.https + "/x", proxies={"https": "http://alice:nope@127.0.0.1:3128"}, timeout=10
        )
    lines = env.log(lambda x: x["target"].endswith("/wrong-password"), count=3)
    assert [x["status"] for x in lines] == ["407"] * 3
    assert {x["user"] for x in lines} == {"alice", "-", "mallory"}


def test_socks5_remote_and_local_dns(env: Env) -> None:
    remote = {"http": f"socks5h://alice:wonderland@{SOCKS}"}
    r = requests.get(f"http://api.example.test:{env.port}/socks5h", proxies=remote, timeout=10)
    assert r.status_code == 200 and r.json()["path"] == "/socks5h"
    local = {"http": f"socks5://alice:wonderland@{SOCKS}"}
    # socks5:// resolves on the client: only addresses work for it here (IPv4 and IPv6).
    r = requests.get(f"http://127.0.0.1:{env.port}/socks5-v4", proxies=local, timeout=10)
    assert r.status_code == 200 and r.json()["origin"] == "api"
    if env.ipv6:
        r = requests.get(f"http://[::1]:{env.port}/socks5-v6", proxies=local, timeout=10)
        assert r.status_code == 200 and r.json()["origin"] == "api6"
    r = requests.get(
        env.https + "/socks-tls",
        proxies={"https": f"socks5h://alice:wonderland@{SOCKS}"},
        verify=env.ca,
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["path"] == "/socks-tls"
    del r
    gc.collect()
    lines = env.log(lambda x: x["proto"] == "socks5" and x["status"] == "200", timeout=5)
    dests = {x["dest"] for x in lines}
    assert f"api.example.test:{env.port}" in dests
    assert f"127.0.0.1:{env.port}" in dests
    assert f"[::1]:{env.port}" in dests or not env.ipv6
    assert all(x["user"] == "alice" for x in lines)


def test_socks5_wrong_password_and_refusals(env: Env) -> None:
    bad = {"http": f"socks5h://alice:nope@{SOCKS}"}
    with pytest.raises(requests.exceptions.ConnectionError, match=r"(?i)auth"):
        requests.get(f"http://api.example.test:{env.port}/", proxies=bad, timeout=10)

    def socks(host: str, port: int, password: str = "wonderland") -> tuple[int, int]:
        with socket.create_connection(("127.0.0.1", 1080), timeout=10) as s:
            s.sendall(b"\x05\x01\x02")
            assert s.recv(2) == b"\x05\x02"
            s.sendall(b"\x01\x05alice" + bytes([len(password)]) + password.encode())
            status = s.recv(2)[1]
            if status:
                return status, -1
            name = host.encode()
            s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
            return 0, s.recv(10)[1]

    assert socks("api.example.test", env.port, "nope") == (1, -1)
    assert socks("internal.example.test", env.port) == (0, 0x02)  # 127.0.0.2: not allowed
    assert socks("blocked.example.test", env.port) == (0, 0x02)
    assert socks("api.example.test", env.closed_port) == (0, 0x05)  # refused
    assert socks("api.example.test", 25) == (0, 0x02)  # not in connect_ports
    assert socks("api.example.test\r\nX-Injected: 1", 443) == (0, 0x08)  # not a host name
    assert socks("nothing.invalid", env.closed_port) == (0, 0x04)  # no such host
    assert env.log(lambda x: x["proto"] == "socks5" and x["status"] == "407")
    [internal] = env.log(lambda x: x["proto"] == "socks5" and x["dest"].startswith("internal."))
    assert internal["status"] == "403" and "127.0.0.2" in internal["reason"]
    [port25] = env.log(lambda x: x["proto"] == "socks5" and x["dest"] == "api.example.test:25")
    assert port25["status"] == "403" and "SOCKS connect to port 25" in port25["reason"]


def test_environment_variables_and_bypass(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", AUTH_PROXY)
    monkeypatch.setenv("HTTPS_PROXY", AUTH_PROXY)
    monkeypatch.setenv("NO_PROXY", "direct.example.test,localhost")
    r = requests.get(f"http://api.example.test:{env.port}/from-env", timeout=10)
    assert r.status_code == 200 and r.json()["headers"]["via"] == "1.1 ferryman"
    r = requests.get(env.https + "/from-env-tls", verify=env.ca, timeout=10)
    assert r.status_code == 200
    # NO_PROXY: straight to the origin ("localhost" is in the list).
    r = requests.get(f"http://localhost:{env.port}/no-proxy", timeout=10)
    assert r.status_code == 200 and "via" not in r.json()["headers"]
    # proxies={'http': None} bypasses the environment's proxy for that request.
    r = requests.get(f"http://127.0.0.1:{env.port}/bypass", proxies={"http": None}, timeout=10)
    assert r.status_code == 200 and "via" not in r.json()["headers"]
    assert env.log(lambda x: x["target"].endswith("/from-env"))
    assert not env.log(lambda x: x["target"].endswith(("/no-proxy", "/bypass")), timeout=0.3)


def test_session_reuses_one_proxy_connection(env: Env) -> None:
    with requests.Session() as s:
        s.proxies = {"http": AUTH_PROXY}
        for i in range(5):
            r = s.get(f"http://api.example.test:{env.port}/session/{i}", timeout=10)
            assert r.status_code == 200 and r.json()["path"] == f"/session/{i}"
    lines = env.log(lambda x: "/session/" in x["target"], count=5)
    assert len(lines) == 5
    assert len({x["client"] for x in lines}) == 1  # one client port: one connection


def test_curl(env: Env) -> None:
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    def curl(*args: str, check: bool = True) -> str:
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", *args],
            capture_output=True,
            text=True,
            env=clean,
            check=check,
        )
        return out.stdout

    user = ("--proxy-user", "alice:wonderland")
    body = json.loads(curl("-x", PROXY, *user, f"http://api.example.test:{env.port}/curl-x"))
    assert body["path"] == "/curl-x" and body["headers"]["via"] == "1.1 ferryman"
    body = json.loads(curl("-x", PROXY, *user, "--cacert", env.ca, env.https + "/curl-tls"))
    assert body["path"] == "/curl-tls"
    body = json.loads(
        curl("--socks5-hostname", SOCKS, *user, f"http://api.example.test:{env.port}/curl-s")
    )
    assert body["path"] == "/curl-s"
    code = curl(
        "-x", PROXY, "-o", "/dev/null", "-w", "%{http_code}", f"http://api.example.test:{env.port}/"
    )
    assert code == "407"
    code = curl("-x", PROXY, *user, "-o", "/dev/null", "-w", "%{http_connect}",
                "https://api.example.test:25/", check=False)  # fmt: skip
    assert code == "403"
    # SOCKS4a has no passwords: with auth on, the proxy refuses it.
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--socks4a", SOCKS, f"http://api.example.test:{env.port}/"],
        capture_output=True, text=True, env=clean,
    )  # fmt: skip
    assert out.returncode != 0
    assert env.log(lambda x: "SOCKS4 has no passwords" in x["reason"])


def test_httpx_with_a_proxy(env: Env) -> None:
    context = ssl.create_default_context(cafile=env.ca)
    with httpx.Client(proxy=AUTH_PROXY, verify=context, trust_env=False) as client:
        r = client.get(f"http://api.example.test:{env.port}/httpx")
        assert r.status_code == 200 and r.json()["headers"]["via"] == "1.1 ferryman"
        r = client.get(env.https + "/httpx-tls")
        assert r.status_code == 200 and r.json()["path"] == "/httpx-tls"
        r = client.post(f"http://api.example.test:{env.port}/post", content=b"z" * 200_000)
        assert r.status_code == 200 and r.json()["body"] == "z" * 200_000


def _connect(target: str, auth: str = "alice:wonderland") -> bytes:
    """The head of the proxy's answer to a CONNECT."""
    token = base64.b64encode(auth.encode()).decode()
    with socket.create_connection(("127.0.0.1", 3128), timeout=10) as s:
        s.sendall(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_denied_destinations_get_403_and_are_logged(env: Env) -> None:
    assert _connect("api.example.test:25").startswith(b"HTTP/1.1 403 ")
    assert _connect("internal.example.test:443").startswith(b"HTTP/1.1 403 ")
    assert _connect("127.0.0.2:443").startswith(b"HTTP/1.1 403 ")
    assert _connect("[::ffff:127.0.0.2]:443").startswith(b"HTTP/1.1 403 ")
    proxies = {"http": AUTH_PROXY}
    r = requests.get(f"http://internal.example.test:{env.port}/", proxies=proxies, timeout=10)
    assert r.status_code == 403 and "127.0.0.2 is a loopback address" in r.json()["message"]
    r = requests.get(f"http://blocked.example.test:{env.port}/", proxies=proxies, timeout=10)
    assert r.status_code == 403 and "blocked by the office policy" in r.json()["message"]
    r = requests.get(f"http://x.ads.example.test:{env.port}/", proxies=proxies, timeout=10)
    assert r.status_code == 403
    refused = env.log(lambda x: x["status"] == "403" and x["proto"] == "http")
    reasons = " | ".join(x["reason"] for x in refused)
    assert "CONNECT to port 25 is not allowed" in reasons
    assert "127.0.0.2 is a loopback address" in reasons
    assert "blocked by the office policy" in reasons


def test_name_with_several_addresses_connects_only_to_allowed_ones(env: Env) -> None:
    # A listener on the forbidden address, same port: it must never see a connection.
    trap = socket.socket()
    trap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    trap.bind(("127.0.0.2", env.port))
    trap.listen()
    trap.setblocking(False)
    try:
        for i in range(3):
            r = requests.get(
                f"http://multi.example.test:{env.port}/multi/{i}",
                proxies={"http": AUTH_PROXY},
                timeout=10,
            )
            assert r.status_code == 200
        with pytest.raises(BlockingIOError):
            trap.accept()
    finally:
        trap.close()


def test_pac_file(env: Env) -> None:
    r = requests.get("http://127.0.0.1:3128/proxy.pac", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ns-proxy-autoconfig"
    assert "function FindProxyForURL(url, host)" in r.text
    assert 'return "PROXY 127.0.0.1:3128";' in r.text
    assert requests.get("http://127.0.0.1:3128/other", timeout=10).status_code == 404


def test_parallel_tunnels_move_their_bytes(env: Env) -> None:
    """A scaled-down throughput check (bench/forward_throughput.py has the real one)."""
    size = 1 << 20
    proxies = {"http": f"socks5h://alice:wonderland@{SOCKS}"}

    def fetch(i: int) -> int:
        url = f"http://api.example.test:{env.port}/big?size={size}&n={i}"
        return len(requests.get(url, proxies=proxies, timeout=30).content)

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(fetch, range(40))) == [size] * 40
    # Through TLS any reordered or reused byte would fail the record MACs.
    for proxy in (AUTH_PROXY, f"socks5h://alice:wonderland@{SOCKS}"):
        r = requests.get(
            env.https + f"/big?size={8 << 20}", proxies={"https": proxy}, verify=env.ca, timeout=30
        )
        assert r.status_code == 200 and r.content == b"x" * (8 << 20)


def test_chaining_through_parent_proxies(tmp_path: Path, env: Env) -> None:
    """Child -> parent: ``*.parent.test`` via the parent's HTTP side, ``*.sparent.test`` via
    its SOCKS5 side; the parent resolves the names and applies its own policy."""
    parent_http, parent_socks, child_http = free_port(), free_port(), free_port()
    carol = shacrypt.sha_crypt(b"c4r0l", "$6$chainsalt")
    parent = {
        "workers": 1,
        "shutdown_timeout": "1s",
        "forward": {
            "listen": [f"127.0.0.1:{parent_http}"],
            "socks5_listen": [f"127.0.0.1:{parent_socks}"],
            "auth": {"users": {"carol": {"password": carol}}},
            "hosts": {"*.parent.test": ["127.0.0.1"], "*.sparent.test": ["127.0.0.1"]},
            "allow_destinations": ["127.0.0.1"],
            "connect_ports": [env.port],
            "default_action": "allow",
        },
    }
    child = {
        "workers": 1,
        "shutdown_timeout": "1s",
        "forward": {
            "listen": [f"127.0.0.1:{child_http}"],
            "connect_ports": [env.port],
            "default_action": "allow",
            "chain": [
                {"match": ["*.parent.test"], "via": f"http://carol:c4r0l@127.0.0.1:{parent_http}"},
                {"match": ["*.sparent.test"], "via": f"socks5://carol:c4r0l@127.0.0.1:{parent_socks}"},
            ],
        },
    }  # fmt: skip
    procs: list[Proc] = []
    try:
        for name, conf, port in (("parent", parent, parent_http), ("child", child, child_http)):
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(conf))
            procs.append(start_ferryman(path, ("127.0.0.1", port)))
        via = {"http": f"http://127.0.0.1:{child_http}"}
        r = requests.get(f"http://api.parent.test:{env.port}/chained", proxies=via, timeout=10)
        assert r.status_code == 200 and r.json()["path"] == "/chained"
        assert r.json()["headers"]["via"] == "1.1 ferryman, 1.1 ferryman"
        r = requests.get(f"http://api.sparent.test:{env.port}/chained-socks", proxies=via)
        assert r.status_code == 200 and r.json()["path"] == "/chained-socks"
        # Tunnels through the child and each side of the parent, spoken over by hand.
        for name in ("parent", "sparent"):
            with socket.create_connection(("127.0.0.1", child_http), timeout=10) as s:
                target = f"api.{name}.test:{env.port}"
                s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                head = s.recv(4096)
                assert head.startswith(b"HTTP/1.1 200 ")
                s.sendall(
                    f"GET /tunnelled HTTP/1.1\r\nHost: {target}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
                assert b'"path": "/tunnelled"' in answer
        # The child does not resolve *.parent.test itself: names it cannot use directly fail.
        r = requests.get(f"http://api.example.test:{env.port}/", proxies=via, timeout=10)
        assert r.status_code == 502
        procs[1].stop()  # the child's pooled connections to the parent close: all logged
        time.sleep(0.3)
        child_log, parent_log = procs[1].stdout(), procs[0].stdout()
        chained = f"target=http://api.parent.test:{env.port}/chained "
        assert chained in child_log and chained in parent_log
        assert f"method=GET dest=api.sparent.test:{env.port}" in child_log
        assert f"proto=socks5 method=CONNECT dest=api.sparent.test:{env.port}" in parent_log
        for text in (child_log, parent_log):
            assert f"method=CONNECT dest=api.parent.test:{env.port}" in text
        assert "user=carol" in parent_log
        tunnel = f'upstream="http://127.0.0.1:{parent_http} -> api.parent.test:{env.port}"'
        assert tunnel in child_log
    finally:
        for p in reversed(procs):
            p.stop()


def test_forward_and_reverse_on_one_port(tmp_path: Path, env: Env) -> None:
    """Origin-form requests go to the server's routes, absolute-form ones and CONNECT to the
    forward proxy, on the same address."""
    port, socks_port = free_port(), free_port()
    config = {
        "workers": 1,
        "shutdown_timeout": "1s",
        "servers": [
            {
                "listen": [f"127.0.0.1:{port}"],
                "routes": [{"path": "/", "respond": {"status": 200, "body": "reverse side"}}],
            }
        ],
        "forward": {
            "listen": [f"127.0.0.1:{port}"],
            "socks5_listen": [f"127.0.0.1:{socks_port}"],
            "clients": ["127.0.0.1/32", "::1"],
            "hosts": {"*.example.test": ["127.0.0.1"]},
            "allow_destinations": ["127.0.0.1"],
            "connect_ports": [env.https_port, env.port],
            "default_action": "allow",
            "timeouts": {"idle": "1s"},
        },
    }
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = start_ferryman(path, ("127.0.0.1", port))
    try:
        r = requests.get(f"http://127.0.0.1:{port}/anything", timeout=10)
        assert r.status_code == 200 and r.text == "reverse side"
        proxies = {"http": f"http://127.0.0.1:{port}", "https": f"http://127.0.0.1:{port}"}
        r = requests.get(f"http://api.example.test:{env.port}/fwd", proxies=proxies, timeout=10)
        assert r.status_code == 200 and r.json()["path"] == "/fwd"
        r = requests.get(env.https + "/fwd-tls", proxies=proxies, verify=env.ca, timeout=10)
        assert r.status_code == 200 and r.json()["path"] == "/fwd-tls"
        # Expect: 100-continue is answered once the request passed the checks.
        body = tmp_path / "body"
        body.write_bytes(b"b" * 5000)
        t = time.monotonic()
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{port}",
             "-H", "Expect: 100-continue", "--data-binary", f"@{body}",
             f"http://api.example.test:{env.port}/expect"],
            capture_output=True, text=True, check=True,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip
        assert json.loads(out.stdout)["body"] == "b" * 5000
        assert time.monotonic() - t < 0.9  # curl waits 1 s for a 100 that never comes
        # Without auth, SOCKS4a works (curl resolves nothing: the proxy does).
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--socks4a", f"127.0.0.1:{socks_port}",
             f"http://api.example.test:{env.port}/socks4a"],
            capture_output=True, text=True, check=True,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )  # fmt: skip
        assert json.loads(out.stdout)["path"] == "/socks4a"
        # A client from outside ``clients`` (127.0.0.2 is not 127.0.0.1/32) is refused.
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            target = f"http://api.example.test:{env.port}/"
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: api.example.test\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 403 ")
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", socks_port))
            try:
                s.sendall(b"\x05\x01\x00")
                assert s.recv(16) == b""  # closed without an answer
            except ConnectionResetError:
                pass  # or reset, when our greeting arrived after the close
        # A tunnel with no bytes either way for timeouts.idle is closed.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            target = f"api.example.test:{env.port}"
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
            t = time.monotonic()
            assert s.recv(4096) == b""
            assert 0.8 < time.monotonic() - t < 3
    finally:
        proc.stop()
