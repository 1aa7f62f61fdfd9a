"""Virtual hosts, route matching and rewrites."""

from __future__ import annotations

from ferryman.config.schema import Rewrite
from ferryman.filters.base import FilterChain
from ferryman.routing.rewrite import compile_rewrite
from ferryman.routing.table import CompiledRoute, HostTable, VirtualHost


def route(path: str, match: str = "prefix") -> CompiledRoute:
    return CompiledRoute(path, path, match, None, FilterChain([]), None, None, 1 << 20, True)


def vhost(names: list[str], *routes: CompiledRoute) -> VirtualHost:
    return VirtualHost(names, list(routes), FilterChain([]), "json")


def test_exact_beats_prefix_beats_regex() -> None:
    exact, short, long, rx = (
        route("/api", "exact"),
        route("/"),
        route("/api/"),
        route(r"\.php$", "regex"),
    )
    v = vhost([], rx, short, long, exact)
    assert v.match(b"/api") is exact
    assert v.match(b"/api/x.php") is long
    assert v.match(b"/x") is short
    only_rx = vhost([], rx, long)
    assert only_rx.match(b"/index.php") is rx
    assert only_rx.match(b"/index.html") is None


def test_prefix_matches_on_segment_boundaries() -> None:
    users = route("/api/users")
    v = vhost([], users)
    assert v.match(b"/api/users") is users
    assert v.match(b"/api/users/7") is users
    assert v.match(b"/api/usersettings") is None


def test_hosts_exact_wildcard_default() -> None:
    a, b, c = vhost(["example.com"]), vhost(["*.example.com"]), vhost(["other.test"])
    table = HostTable([(a, False), (b, False), (c, True)])
    assert table.lookup(b"example.com") is a
    assert table.lookup(b"EXAMPLE.com:8080") is a
    assert table.lookup(b"api.example.com") is b
    assert table.lookup(b"unknown.test") is c
    assert table.lookup(b"[::1]:80") is c


def test_rewrites() -> None:
    strip = compile_rewrite(Rewrite(strip_prefix=True), "/api", "prefix")
    assert strip(b"/api/users") == b"/users"
    assert strip(b"/api") == b"/"
    replace = compile_rewrite(Rewrite(replace_prefix="/users"), "/api/users", "prefix")
    assert replace(b"/api/users/42") == b"/users/42"
    regex = compile_rewrite(Rewrite(regex="^/v1/(\\w+)/(.*)$", replacement="/$2/$1"), "/", "prefix")
    assert regex(b"/v1/orders/7") == b"/7/orders"
