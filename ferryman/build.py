"""Turn a validated :class:`Config` into the objects that serve requests.

Everything a request needs that does not depend on the request is made here once: upstream
groups, compiled routes with their handlers and filter chains, host tables per listener.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ferryman.config.schema import AccessLog as AccessLogConfig
from ferryman.config.schema import Config, PluginRef, Route, Server
from ferryman.filters.access_log import AccessLog
from ferryman.filters.base import Filter, FilterChain
from ferryman.filters.compression import Compression
from ferryman.filters.forwarded import ForwardedHeaders
from ferryman.filters.headers import RequestHeaders, ResponseHeaders
from ferryman.proxy.forward import ProxyRoute
from ferryman.proxy.h2proxy import H2ProxyRoute
from ferryman.proxy.simple import Redirect, Respond
from ferryman.proxy.static import StaticFiles
from ferryman.routing.rewrite import compile_rewrite
from ferryman.routing.table import CompiledRoute, HostTable, VirtualHost
from ferryman.server.tls import build_listener_tls
from ferryman.tls import TlsError
from ferryman.upstream.group import UpstreamGroup, single_peer_group

if TYPE_CHECKING:
    from ferryman.forward.service import ForwardProxy


class BuildError(Exception):
    """A config that validates but cannot be built (a plugin that does not import, ...)."""


class Runtime:
    """The serving objects of one config: listeners' host tables and upstream groups."""

    def __init__(self, config: Config) -> None:
        self.config = config
        try:
            self.groups = {name: UpstreamGroup(name, up) for name, up in config.upstreams.items()}
            by_address: dict[str, list[Server]] = {}
            for server in config.servers:
                for address in server.listen:
                    by_address.setdefault(address, []).append(server)
            self.tls = build_listener_tls(by_address, config.http2)
        except TlsError as e:
            raise BuildError(str(e)) from None
        self.hosts: dict[str, HostTable] = {}
        per_address: dict[str, list[tuple[VirtualHost, bool]]] = {}
        for si, server in enumerate(config.servers):
            vhost = self._vhost(si, server)
            for address in server.listen:
                per_address.setdefault(address, []).append((vhost, server.default))
        for address, vhosts in per_address.items():
            self.hosts[address] = HostTable(vhosts)
        self.forward = _build_forward(config, self.hosts)

    def _vhost(self, si: int, server: Server) -> VirtualHost:
        access = server.access_log or self.config.log.access
        server_filters = self._server_filters(server, access)
        routes = [
            self._route(si, ri, server, route, server_filters)
            for ri, route in enumerate(server.routes)
        ]
        return VirtualHost(
            server.server_names, routes, FilterChain(server_filters), server.error_format
        )

    def _server_filters(self, server: Server, access: AccessLogConfig) -> list[Filter]:
        filters: list[Filter] = []
        if access.enabled:
            filters.append(AccessLog(access))
        if server.response_headers is not None:
            filters.append(ResponseHeaders(server.response_headers))
        if server.request_headers is not None:
            filters.append(RequestHeaders(server.request_headers))
        filters += [load_plugin(p, f"servers[{server.listen[0]}]") for p in server.plugins]
        return filters

    def _route(
        self, si: int, ri: int, server: Server, route: Route, server_filters: Sequence[Filter]
    ) -> CompiledRoute:
        where = f"servers.{si}.routes.{ri}"
        filters = list(server_filters)
        if route.proxy is not None and route.proxy.x_forwarded:
            filters.append(ForwardedHeaders(self.config.trusted_proxies, route.proxy.forwarded))
        if route.request_headers is not None:
            filters.append(RequestHeaders(route.request_headers))
        if route.response_headers is not None:
            filters.append(ResponseHeaders(route.response_headers))
        filters += [load_plugin(p, where) for p in route.plugins]
        compression = route.compression or server.compression
        if compression is not None and compression.enabled:
            # First in the list, so last on the response: it compresses what the others made.
            filters.insert(0, Compression(compression))
        chain = FilterChain(filters)
        handler: object
        if route.proxy is not None:
            if route.proxy.upstream is not None:
                group = self.groups[route.proxy.upstream]
            else:
                assert route.proxy.url is not None
                address = route.proxy.url.split("://", 1)[1].rstrip("/")
                secure = route.proxy.url.lower().startswith("https://")
                if ":" not in address.rsplit("]", 1)[-1]:
                    address += ":443" if secure else ":80"
                if secure:
                    address = "https://" + address
                group = self.groups.setdefault(
                    f"url:{address}", single_peer_group(route.proxy.url, address)
                )
            if group.protocol == "http/1.1":
                handler = ProxyRoute(route.proxy, group, chain)
            else:
                handler = H2ProxyRoute(route.proxy, group, chain)
        elif route.respond is not None:
            handler = Respond(route.respond)
        elif route.static is not None:
            handler = StaticFiles(route.static, route.path, chain)
        else:
            assert route.redirect is not None
            handler = Redirect(route.redirect)
        rewrite = None
        if route.rewrite is not None:
            try:
                rewrite = compile_rewrite(route.rewrite, route.path, route.match)
            except ValueError as e:
                raise BuildError(f"{where}.rewrite: {e}") from None
        max_body = route.max_body_size
        if max_body is None:
            max_body = self.config.limits.max_body_size
        return CompiledRoute(
            f"{where}:{route.path}",
            route.path,
            route.match,
            handler,
            chain,
            rewrite,
            route.methods,
            max_body,
            route.access_log,
        )


def _build_forward(config: Config, hosts: dict[str, HostTable]) -> ForwardProxy | None:
    """The forward proxy (``forward:``), with host tables for its own listeners."""
    if config.forward is None:
        return None
    from ferryman.forward.service import ForwardBuildError, ForwardProxy

    try:
        forward = ForwardProxy(config.forward, config.limits.max_connections)
    except ForwardBuildError as e:
        raise BuildError(str(e)) from None
    forward.add_host_tables(hosts)
    return forward


def load_plugin(ref: PluginRef, where: str) -> Filter:
    module_name, _, class_name = ref.use.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as e:
        raise BuildError(f"{where}.plugins: cannot load {ref.use}: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Filter)):
        raise BuildError(f"{where}.plugins: {ref.use} is not a ferryman Filter subclass")
    try:
        return cls(ref.options)
    except Exception as e:
        raise BuildError(f"{where}.plugins: {ref.use} refused its options: {e}") from None
