"""The forward proxy built from its config: what the runtime and the worker ask of it."""

from __future__ import annotations

import asyncio

from ferryman.config.base import parse_hostport
from ferryman.config.forward import Forward
from ferryman.config.schema import RespondHandler
from ferryman.filters.base import FilterChain
from ferryman.forward.acl import AccessPolicy, AddressPolicy
from ferryman.forward.auth import AuthConfigError, Authenticator
from ferryman.forward.chain import ChainRouter, authority
from ferryman.forward.http import ForwardHttp
from ferryman.forward.log import access_log
from ferryman.forward.outbound import Dialer
from ferryman.forward.pac import pac_script
from ferryman.forward.resolver import HostsTable, Resolver
from ferryman.forward.socks_server import SocksConnection
from ferryman.proxy.simple import Respond
from ferryman.routing.table import CompiledRoute, HostTable, VirtualHost


class ForwardBuildError(ValueError):
    pass


class ForwardProxy:
    def __init__(self, config: Forward, max_connections: int = 10000) -> None:
        self.config = config
        # Per worker, for the SOCKS listeners (HTTP listeners count their own).
        self.max_connections = max_connections
        try:
            self.auth = Authenticator(config.auth) if config.auth is not None else None
        except AuthConfigError as e:
            raise ForwardBuildError(f"forward.auth: {e}") from None
        self.access = AccessPolicy(
            config.rules,
            config.default_action == "allow",
            config.clients,
            config.connect_ports,
        )
        self.resolver = Resolver(HostsTable(config.hosts), config.dns)
        self.dialer = Dialer(
            self.resolver,
            AddressPolicy(config.allow_destinations),
            ChainRouter(config.chain),
            config.timeouts.connect,
            self.access,
        )
        self.via = f"1.1 {config.via}".encode("latin-1")
        self.log = access_log(config.access_log)  # None when turned off
        self.http = ForwardHttp(self)
        self.socks_connections: set[SocksConnection] = set()

    def http_for(self, address: str) -> ForwardHttp | None:
        """The ``forward`` side of the listener on ``address``, if it is a forward one."""
        return self.http if address in self.config.listen else None

    def add_host_tables(self, hosts: dict[str, HostTable]) -> None:
        """Host tables for forward listeners that no server shares: origin-form requests
        there get the PAC file (when configured) or 404, and every request is logged (unless
        the access log is turned off: then the chain has no log filter at all)."""
        chain = FilterChain([self.log] if self.log is not None else [])
        routes: list[CompiledRoute] = []
        pac = self.config.pac
        if pac is not None:
            host, port = parse_hostport(self.config.listen[0])
            body = pac_script(pac, f"PROXY {authority(host, port)}")
            handler = Respond(
                RespondHandler(body=body, content_type="application/x-ns-proxy-autoconfig")
            )
            routes.append(
                CompiledRoute(
                    "forward:pac",
                    pac.path,
                    "exact",
                    handler,
                    chain,
                    None,
                    ["GET", "HEAD"],
                    0,
                    True,
                )
            )
        vhost = VirtualHost([], routes, chain, "json")
        for address in self.config.listen:
            hosts.setdefault(address, HostTable([(vhost, True)]))

    async def open_socks(self) -> list[asyncio.AbstractServer]:
        from ferryman.server.listener import open_socket

        loop = asyncio.get_running_loop()
        servers: list[asyncio.AbstractServer] = []
        for address in self.config.socks5_listen:
            port = parse_hostport(address)[1]
            sock = open_socket(address)

            def make(port: int = port) -> SocksConnection:
                return SocksConnection(self, port)

            servers.append(await loop.create_server(make, sock=sock))
        return servers

    def close(self) -> None:
        """At shutdown: drop SOCKS clients still in their handshake and idle origin
        connections; tunnels end with the worker."""
        for conn in list(self.socks_connections):
            conn.drain()
        self.http.close()
