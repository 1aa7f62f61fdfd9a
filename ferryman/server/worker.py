"""One worker process: opens the listeners, serves until told to stop, then drains."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket

from ferryman._compiled import compiled
from ferryman.build import Runtime
from ferryman.config.schema import Config
from ferryman.observe.logwriter import flush_all
from ferryman.server.accept import factory
from ferryman.server.listener import Listener, open_socket

log = logging.getLogger("ferryman")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps dev setups going
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_worker(config: Config, runtime: Runtime | None = None) -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(serve(config, runtime))


async def serve(config: Config, runtime: Runtime | None = None) -> int:
    loop = asyncio.get_running_loop()
    runtime = runtime or Runtime(config)
    listeners: list[Listener] = []
    servers: list[asyncio.AbstractServer] = []
    for address, hosts in runtime.hosts.items():
        sock = open_socket(address)
        tls = runtime.tls.get(address)
        listener = Listener(address, hosts, config.limits, tls=tls, http2=config.http2)
        if runtime.forward is not None:
            listener.forward = runtime.forward.http_for(address)
        listeners.append(listener)
        servers.append(
            await loop.create_server(
                factory(listener),
                sock=sock,
                ssl=tls.context if tls is not None else None,
                ssl_handshake_timeout=config.limits.client_header_timeout if tls else None,
            )
        )
    if runtime.forward is not None:
        servers += await runtime.forward.open_socks()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The config's objects live as long as the worker: keep the collector off them, and let
    # it run less often, since a request allocates many short-lived tuples and no cycles.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    log.info(
        "worker serving %s (%s)",
        ", ".join(x.address for x in listeners),
        "compiled" if compiled() else "plain Python",
    )
    await stop.wait()
    await drain(servers, listeners, config.shutdown_timeout)
    for group in runtime.groups.values():
        group.close()
    if runtime.forward is not None:
        runtime.forward.close()
    flush_all()
    return 0


async def drain(
    servers: list[asyncio.AbstractServer], listeners: list[Listener], timeout: float
) -> None:
    """Stop accepting, let requests in flight finish (up to ``timeout``), close the rest."""
    for server in servers:
        server.close()
    for listener in listeners:
        listener.draining = True
        for conn in list(listener.connections):
            conn.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(x.connections for x in listeners) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for listener in listeners:
        for conn in list(listener.connections):
            if conn.transport is not None:
                conn.transport.abort()


def check_bind(config: Config) -> None:
    """Fail early, before any worker starts, if an address cannot be bound. Binding without
    SO_REUSEPORT also refuses a port another running instance holds, which the workers'
    own SO_REUSEPORT sockets would otherwise silently share."""
    addresses = {a for server in config.servers for a in server.listen}
    if config.forward is not None:
        addresses.update(config.forward.listen + config.forward.socks5_listen)
    for address in sorted(addresses):
        sock: socket.socket = open_socket(address, reuse_port=False, backlog=1)
        sock.close()
