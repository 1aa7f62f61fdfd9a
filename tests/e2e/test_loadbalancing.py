"""Scenario 1's upstream groups end to end: examples/loadbalancing.yaml on its fixed ports."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

from tests.support.procs import ROOT, Proc

BASE = "http://127.0.0.1:8080"
CONFIG = str(ROOT / "examples" / "loadbalancing.yaml")


@pytest.fixture
def backends(origin: Callable[..., Proc]) -> dict[int, Proc]:
    return {port: origin(port, f"b{port}") for port in (3001, 3002, 3003)}


def origins_of(client: httpx.Client, n: int, path: str = "/") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        r = client.get(path)
        assert r.status_code == 200
        seen[r.headers["x-origin"]] += 1
    return seen


def test_health_is_answered_and_not_logged(ferryman: Callable[..., Proc]) -> None:
    proc = ferryman(CONFIG, 8080)
    r = httpx.get(BASE + "/health")
    assert r.status_code == 200
    assert r.text == "OK\n"
    assert r.headers["content-type"] == "text/plain"
    assert httpx.get(BASE + "/nothing-up").status_code == 502
    time.sleep(0.3)
    assert "/health" not in proc.stdout()
    assert '"GET /nothing-up HTTP/1.1" 502' in proc.stdout()


def test_weights_split_5_to_3(backends: dict[int, Proc], ferryman: Callable[..., Proc]) -> None:
    ferryman(CONFIG, 8080)
    with httpx.Client(base_url=BASE) as c:
        seen = origins_of(c, 800)
    assert seen["b3003"] == 0  # the backup idles while a primary lives
    assert abs(seen["b3001"] - 500) <= 25, seen  # 5:3 within 5 %
    assert abs(seen["b3002"] - 300) <= 15, seen


def test_backup_only_while_primaries_are_down(
    backends: dict[int, Proc], ferryman: Callable[..., Proc]
) -> None:
    ferryman(CONFIG, 8080)
    with httpx.Client(base_url=BASE) as c:
        assert origins_of(c, 16)["b3003"] == 0
        backends[3001].stop()
        backends[3002].stop()
        assert origins_of(c, 20) == Counter({"b3003": 20})


def test_primary_killed_mid_run_every_get_succeeds(
    backends: dict[int, Proc], ferryman: Callable[..., Proc]
) -> None:
    ferryman(CONFIG, 8080)
    statuses: Counter[int] = Counter()
    after: Counter[str] = Counter()
    with httpx.Client(base_url=BASE) as c:
        for i in range(300):
            if i == 100:
                backends[3001].kill()
            r = c.get(f"/item/{i}")
            statuses[r.status_code] += 1
            if i >= 100:
                after[r.headers["x-origin"]] += 1
    assert statuses == Counter({200: 300})
    # The surviving primary takes everything (retried); the backup stays idle.
    assert after == Counter({"b3002": 200})


def test_least_conn_sends_new_requests_away_from_the_busy_peer(
    origin: Callable[..., Proc], ferryman: Callable[..., Proc]
) -> None:
    origin(8081, "api1")
    origin(8082, "api2")
    ferryman(CONFIG, 8080)
    held: list[httpx.Response] = []

    def slow() -> None:
        held.append(httpx.get(BASE + "/api/slow?delay=2", timeout=10))

    # Pin a slow request on one peer, then a second slow one lands on the other (least_conn
    # keeps them even), then a third: both peers hold at least one.
    threads = [threading.Thread(target=slow) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.15)
    with httpx.Client(base_url=BASE) as c:
        fast = Counter(c.get("/api/fast").headers["x-origin"] for _ in range(10))
    for t in threads:
        t.join()
    slow_split = Counter(r.headers["x-origin"] for r in held)
    assert sorted(slow_split.values()) == [1, 2]
    busier = slow_split.most_common(1)[0][0]
    # Fast requests go to the peer with one slow request in flight, never the one with two.
    assert sum(fast.values()) == 10
    assert fast[busier] == 0, (slow_split, fast)
