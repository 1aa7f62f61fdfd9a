"""Which route answers a request: server by ``Host``, then location by path.

Servers: an exact name wins, then the longest ``*.suffix`` wildcard, then the listener's
default server (the one marked ``default``, else the first). Locations: an exact match wins,
then the longest prefix, then the first regex in file order.

A prefix that ends without ``/`` matches at segment boundaries only (``/api/users`` matches
``/api/users`` and ``/api/users/7`` but not ``/api/usersettings``), so rewrites that strip
it never glue two names together.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ferryman.filters.base import FilterChain
from ferryman.routing.rewrite import Rewriter


class CompiledRoute:
    """A route ready to serve: matcher data, handler and filter chain, all built once."""

    __slots__ = (
        "access_log",
        "chain",
        "handler",
        "match",
        "max_body_size",
        "methods",
        "name",
        "path",
        "path_bytes",
        "regex",
        "rewrite",
    )

    def __init__(
        self,
        name: str,
        path: str,
        match: str,
        handler: Any,
        chain: FilterChain,
        rewrite: Rewriter | None,
        methods: Sequence[str] | None,
        max_body_size: int,
        access_log: bool,
    ) -> None:
        self.name = name
        self.path = path
        self.path_bytes = path.encode()
        self.match = match
        self.regex = re.compile(self.path_bytes) if match == "regex" else None
        self.handler = handler
        self.chain = chain
        self.rewrite = rewrite
        self.methods = frozenset(m.upper() for m in methods) if methods else None
        self.max_body_size = max_body_size
        self.access_log = access_log


class VirtualHost:
    __slots__ = ("chain", "error_format", "exact", "names", "prefixes", "regexes")

    def __init__(
        self,
        names: Sequence[str],
        routes: Sequence[CompiledRoute],
        chain: FilterChain,
        error_format: str,
    ) -> None:
        self.names = list(names)
        self.chain = chain  # server-level filters: used when no route matches
        self.error_format = error_format
        self.exact: dict[bytes, CompiledRoute] = {}
        prefixes: list[CompiledRoute] = []
        self.regexes: list[CompiledRoute] = []
        for r in routes:
            if r.match == "exact":
                self.exact.setdefault(r.path_bytes, r)
            elif r.match == "prefix":
                prefixes.append(r)
            else:
                self.regexes.append(r)
        # Longest first; a stable sort keeps file order among equals.
        self.prefixes = sorted(prefixes, key=lambda r: -len(r.path_bytes))

    def match(self, path: bytes) -> CompiledRoute | None:
        route = self.exact.get(path)
        if route is not None:
            return route
        for r in self.prefixes:
            p = r.path_bytes
            if path.startswith(p) and (
                len(path) == len(p) or p.endswith(b"/") or path[len(p)] == 47  # "/"
            ):
                return r
        for r in self.regexes:
            assert r.regex is not None
            if r.regex.search(path):
                return r
        return None


class HostTable:
    """The virtual hosts sharing one listening address."""

    __slots__ = ("_cache", "default", "exact", "wildcards")

    def __init__(self, hosts: Sequence[tuple[VirtualHost, bool]]) -> None:
        self.exact: dict[str, VirtualHost] = {}
        wildcards: list[tuple[str, VirtualHost]] = []
        default: VirtualHost | None = None
        for vhost, is_default in hosts:
            if is_default and default is None:
                default = vhost
            for name in vhost.names:
                name = name.lower()
                if name.startswith("*."):
                    wildcards.append((name[1:], vhost))
                elif name.startswith("."):
                    wildcards.append((name, vhost))
                    self.exact.setdefault(name[1:], vhost)
                else:
                    self.exact.setdefault(name, vhost)
        self.wildcards = sorted(wildcards, key=lambda w: -len(w[0]))
        self.default = default or hosts[0][0]
        self._cache: dict[bytes, VirtualHost] = {}

    def lookup(self, host_header: bytes) -> VirtualHost:
        vhost = self._cache.get(host_header)
        if vhost is not None:
            return vhost
        vhost = self._resolve(host_header)
        if len(self._cache) < 1024:
            self._cache[host_header] = vhost
        return vhost

    def _resolve(self, host_header: bytes) -> VirtualHost:
        host = host_header.decode("latin-1").lower()
        host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
        host = host.rstrip(".")
        vhost = self.exact.get(host)
        if vhost is not None:
            return vhost
        for suffix, v in self.wildcards:
            if host.endswith(suffix):
                return v
        return self.default
