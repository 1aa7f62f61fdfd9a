"""Scenario 2 end to end: examples/gateway.yaml with real services on its fixed ports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
import websockets

from tests.support.procs import ROOT, Proc

BASE = "http://127.0.0.1:8080"


@pytest.fixture
def gateway(origin: Callable[..., Proc], ferryman: Callable[..., Proc]) -> Proc:
    for port, name in ((3001, "users"), (3002, "orders"), (3003, "products"), (3000, "frontend")):
        origin(port, name)
    return ferryman(str(ROOT / "examples" / "gateway.yaml"), 8080)


def test_routing_and_rewrites(gateway: Proc) -> None:
    with httpx.Client(base_url=BASE) as c:
        cases = [
            ("/api/users/42?x=1", "users", "/users/42?x=1"),
            ("/api/users", "users", "/users"),
            ("/api/orders/7", "orders", "/orders/7"),
            ("/api/products/9", "products", "/api/products/9"),
            ("/", "frontend", "/"),
            ("/about/team", "frontend", "/about/team"),
        ]
        for path, service, seen in cases:
            r = c.get(path)
            assert r.status_code == 200, path
            body = r.json()
            assert body["origin"] == service, path
            assert body["path"] == seen, path
            assert r.headers["x-proxied-by"] == "Ferryman"


def test_forwarded_and_timestamp_headers(gateway: Proc) -> None:
    r = httpx.get(BASE + "/api/users/1", headers={"X-Forwarded-For": "10.9.8.7"})
    seen = r.json()["headers"]
    assert seen["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert seen["x-real-ip"] == "127.0.0.1"  # the client is not a trusted proxy
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "127.0.0.1:8080"
    assert seen["host"] == "127.0.0.1:8080"
    stamp = int(seen["x-request-timestamp"])
    assert abs(stamp / 1000 - time.time()) < 60


def test_no_route_is_404_json(gateway: Proc) -> None:
    r = httpx.get(BASE + "/api/unknown/thing")
    assert r.status_code == 404
    assert r.json() == {"error": "Route not found"}
    assert r.headers["date"].endswith(" GMT")
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-proxied-by"] == "Ferryman"


def test_unreachable_upstream_is_502_json(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    # Only the frontend runs: the user service on :3001 is down.
    origin(3000, "frontend")
    ferryman(str(ROOT / "examples" / "gateway.yaml"), 8080)
    r = httpx.get(BASE + "/api/users/1")
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "Bad Gateway"
    assert body["message"]
    assert r.headers["x-proxied-by"] == "Ferryman"
    assert httpx.get(BASE + "/").status_code == 200


def test_log_lines(gateway: Proc) -> None:
    httpx.get(BASE + "/api/orders/5")
    httpx.get(BASE + "/api/nope")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        err = gateway.stderr()
        if "/api/nope - 404" in err:
            break
        time.sleep(0.05)
    err = gateway.stderr()
    assert "GET /api/orders/5 -> http://127.0.0.1:3002/orders/5" in err
    assert "/api/orders/5 - 200" in err
    assert "/api/nope - 404" in err
    out = gateway.stdout()
    assert '"GET /api/orders/5 HTTP/1.1" 200' in out


def test_websocket_echo_through_gateway(gateway: Proc) -> None:
    async def talk() -> list[str]:
        async with websockets.connect("ws://127.0.0.1:8080/chat") as ws:
            got = []
            for msg in ("hello", "ferryman", "x" * 70000):
                await ws.send(msg)
                got.append(await ws.recv())
            return got  # type: ignore[return-value]

    got = asyncio.run(talk())
    assert got == ["hello", "ferryman", "x" * 70000]


def test_websocket_upgrade_without_route_is_closed(gateway: Proc) -> None:
    async def attempt() -> None:
        async with websockets.connect("ws://127.0.0.1:8080/api/nowhere"):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        asyncio.run(attempt())
    assert info.value.response.status_code == 404


def test_refused_upgrade_returns_upstream_answer(gateway: Proc) -> None:
    async def attempt() -> None:
        async with websockets.connect("ws://127.0.0.1:8080/chat?refuse=1"):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        asyncio.run(attempt())
    assert info.value.response.status_code == 403
    assert json.loads(info.value.response.body) == {"refused": True}
