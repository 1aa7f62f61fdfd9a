"""Balancers and passive health, fed the clock: no sockets."""

from __future__ import annotations

from collections import Counter

from ferryman.config.schema import Upstream
from ferryman.upstream.balancer import ConsistentHash, LeastConn, RandomTwo, RoundRobin
from ferryman.upstream.group import UpstreamGroup
from ferryman.upstream.peer import Peer


def peers(*weights: int) -> list[Peer]:
    return [Peer(f"10.0.0.{i}:80", w) for i, w in enumerate(weights, 1)]


def test_smooth_weighted_round_robin_interleaves() -> None:
    a, b = peers(5, 3)
    rr = RoundRobin([a, b])
    seq = "".join("a" if rr.pick(0, []) is a else "b" for _ in range(8))
    assert seq == "abaababa"  # nginx's smooth sequence for 5:3, not aaaaabbb
    assert Counter(rr.pick(0, []) for _ in range(800)) == {a: 500, b: 300}


def test_round_robin_skips_tried_and_down_peers() -> None:
    a, b, c = peers(1, 1, 1)
    rr = RoundRobin([a, b, c])
    b.down_until = 100
    assert {rr.pick(50, [a]) for _ in range(5)} == {c}
    assert rr.pick(50, [a, c]) is None
    assert rr.pick(150, [a, c]) is b  # back up after its down time


def test_passive_health_max_fails_within_fail_timeout() -> None:
    p = Peer("10.0.0.1:80", max_fails=2, fail_timeout=10)
    p.failed(0)
    assert p.available(1)
    p.failed(5)
    assert not p.available(6)
    assert p.available(15.1)
    q = Peer("10.0.0.2:80", max_fails=2, fail_timeout=10)
    q.failed(0)
    q.failed(11)  # outside the window: counting starts again
    assert q.available(11)


def test_least_conn_prefers_fewest_in_flight_per_weight() -> None:
    a, b = peers(1, 2)
    lc = LeastConn([a, b])
    a.active, b.active = 1, 1
    assert lc.pick(0, []) is b  # 1/2 < 1/1
    b.active = 3
    assert lc.pick(0, []) is a


def test_least_conn_ties_rotate() -> None:
    a, b = peers(1, 1)
    lc = LeastConn([a, b])
    assert {lc.pick(0, []) for _ in range(4)} == {a, b}


def test_consistent_hash_is_stable_and_moves_few_keys() -> None:
    ps = peers(1, 1, 1, 1)
    h = ConsistentHash(ps)
    keys = [f"client-{i}".encode() for i in range(2000)]
    before = {k: h.pick(0, [], k) for k in keys}
    assert before == {k: h.pick(0, [], k) for k in keys}
    assert len(set(before.values())) == 4
    ps[0].down_until = 10
    after = {k: h.pick(0, [], k) for k in keys}
    moved = [k for k in keys if before[k] is not after[k]]
    assert all(before[k] is ps[0] for k in moved)  # only the lost peer's keys move


def test_random_two_takes_the_less_busy() -> None:
    a, b = peers(1, 1)
    a.active = 10
    r = RandomTwo([a, b])
    assert {r.pick(0, []) for _ in range(20)} == {b}


def group(**extra: object) -> UpstreamGroup:
    servers = [
        {"address": "127.0.0.1:1", "weight": 5},
        {"address": "127.0.0.1:2", "weight": 3},
        {"address": "127.0.0.1:3", "backup": True},
    ]
    return UpstreamGroup("g", Upstream.model_validate({"servers": servers, **extra}))


def test_backup_only_when_every_primary_is_down() -> None:
    g = group()
    p1, p2, backup = g.peers
    assert {g.pick([], b"").address for _ in range(16)} == {p1.address, p2.address}
    p1.down_until = p2.down_until = 1e18
    assert g.pick([], b"") is backup
    assert g.pick([backup], b"") is None


def test_everything_down_still_tries_a_primary() -> None:
    g = group()
    for p in g.peers:
        p.down_until = 1e18
    assert g.pick([], b"") in g.peers[:2]


def test_hash_key_from_cookie_and_header() -> None:
    from ferryman.context import RequestContext

    g = group(balance="hash", hash_key="cookie:sid")
    ctx = RequestContext(
        "1.2.3.4", 1, 80, "http", "GET", b"/", "1.1", [(b"cookie", b"a=1; sid=xyz; b=2")], "h"
    )
    assert g.key(ctx) == b"xyz"
    g2 = group(balance="hash", hash_key="header:X-User")
    ctx.headers.append((b"x-user", b"alice"))
    assert g2.key(ctx) == b"alice"
