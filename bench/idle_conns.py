"""Memory per idle keep-alive connection: Ferryman vs nginx, one worker each.

    .venv/bin/python bench/idle_conns.py [--conns 5000]

For each proxy: measure the worker's RSS, open N HTTP/1.1 connections that each send one
``GET /health`` and read the answer, then stay open and idle; measure RSS again and print the
difference. Everything runs on 127.0.0.1; results go to bench/results/idle_conns.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    RESULTS_DIR,
    BenchError,
    Server,
    ferryman_conf,
    free_ports,
    install_sigterm_handler,
    machine_info,
    machine_line,
    make_workdir,
    origin_nginx_conf,
    process_tree,
    proxy_nginx_conf,
    raise_nofile_limit,
    rss_bytes,
    start_ferryman,
    start_nginx,
    table,
    wait_ready,
    worker_pids,
    write_origin_files,
)

MB = 1024 * 1024
REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTH_ROUTE = {"path": "/health", "match": "exact", "respond": {"status": 200, "body": "OK"}}
NGINX_HEALTH = '        location = /health {\n            return 200 "OK";\n        }\n'

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Memory:
    worker_rss: int  # bytes, summed over the serving processes (workers, or the process itself)
    tree_rss: int  # bytes, summed over the whole process tree


@dataclass
class Result:
    proxy: str
    requested: int
    opened: int
    failed: int
    open_at_measurement: int
    before: Memory
    with_conns: Memory
    after_close: Memory

    @property
    def delta_mb(self) -> float:
        return (self.with_conns.worker_rss - self.before.worker_rss) / MB

    @property
    def kib_per_conn(self) -> float:
        n = self.open_at_measurement
        return (self.with_conns.worker_rss - self.before.worker_rss) / 1024 / n if n else 0.0


def memory(server: Server) -> Memory:
    return Memory(
        worker_rss=sum(rss_bytes(p) for p in worker_pids(server.pid)),
        tree_rss=sum(rss_bytes(p) for p in process_tree(server.pid)),
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: (status, body); Content-Length or chunked framing."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                # No trailers expected; a trailer line would end with another CRLF.
                return status, body
            body += chunk[:-2]
    return status, await reader.readexactly(int(headers.get("content-length", "0")))


async def open_one(port: int) -> Conn:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(REQUEST)
        status, body = await asyncio.wait_for(read_response(reader), timeout=30)
    except BaseException:
        writer.close()
        raise
    if status != 200 or body != b"OK":
        writer.close()
        raise BenchError(f"GET /health returned {status} {body[:80]!r}")
    return reader, writer


async def open_many(port: int, n: int, concurrency: int) -> tuple[list[Conn], list[str]]:
    """Open ``n`` connections, at most ``concurrency`` handshakes in flight at once."""
    sem = asyncio.Semaphore(concurrency)

    async def guarded() -> Conn:
        async with sem:
            return await open_one(port)

    results = await asyncio.gather(*(guarded() for _ in range(n)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, tuple)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return conns, errors


async def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


async def measure(server: Server, args: argparse.Namespace) -> Result:
    # Warm up: a few connections through the whole path, so lazy setup is in the baseline.
    warm, errors = await open_many(server.port, 20, 20)
    await close_all(warm)
    if errors:
        raise BenchError(f"{server.name}: warm-up failed: {errors[0]}")
    await asyncio.sleep(args.settle)
    before = memory(server)

    t0 = time.monotonic()
    conns, errors = await open_many(server.port, args.conns, args.concurrency)
    took = time.monotonic() - t0
    print(f"{server.name}: opened {len(conns)}/{args.conns} connections in {took:.1f}s", flush=True)
    if errors:
        print(f"{server.name}: {len(errors)} failed, first: {errors[0]}", file=sys.stderr)
    await asyncio.sleep(args.settle)
    with_conns = memory(server)
    # A connection the server closed has seen EOF by now (the loop ran during the sleep).
    still_open = sum(1 for reader, _ in conns if not reader.at_eof())

    await close_all(conns)
    await asyncio.sleep(args.settle)
    after = memory(server)
    server.check_alive()
    return Result(
        proxy=server.name,
        requested=args.conns,
        opened=len(conns),
        failed=len(errors),
        open_at_measurement=still_open,
        before=before,
        with_conns=with_conns,
        after_close=after,
    )


def render(results: list[Result], n: int, info: dict[str, str], markdown: bool) -> str:
    header = [
        "proxy",
        "idle conns",
        "worker RSS before MB",
        "with conns MB",
        "delta MB",
        "KiB/conn",
        "after close MB",
    ]
    rows = [
        [
            r.proxy,
            f"{r.open_at_measurement}/{n}",
            f"{r.before.worker_rss / MB:.1f}",
            f"{r.with_conns.worker_rss / MB:.1f}",
            f"{r.delta_mb:.1f}",
            f"{r.kib_per_conn:.1f}",
            f"{r.after_close.worker_rss / MB:.1f}",
        ]
        for r in results
    ]
    text = table(header, rows, markdown=markdown)
    if not markdown:
        return text
    return (
        "### Memory per idle keep-alive connection, 1 worker each\n\n"
        f"Machine: {machine_line(info)}  \n"
        f"Load: {n} HTTP/1.1 keep-alive connections, one GET /health each, then idle; "
        "RSS = VmRSS of the worker process.\n\n"
        f"{text}\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=5000, help="idle connections (default 5000)")
    p.add_argument(
        "--concurrency", type=int, default=100, help="connects in flight at once (default 100)"
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before measuring (default 2)"
    )
    p.add_argument(
        "--only", default="ferryman,nginx", help="comma-separated: ferryman,nginx (default both)"
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "idle_conns.json", help=argparse.SUPPRESS
    )
    p.add_argument("--fake-ferryman", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.proxies = [x.strip() for x in args.only.split(",") if x.strip()]
    if not args.proxies or any(x not in ("ferryman", "nginx") for x in args.proxies):
        p.error(f"--only takes ferryman and/or nginx; got {args.only!r}")
    if args.conns < 1:
        p.error("--conns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_sigterm_handler()
    limit = raise_nofile_limit()  # before starting servers: they inherit it
    if args.conns + 200 > limit:
        print(f"idle_conns: error: --conns {args.conns} needs more than the fd limit {limit}")
        return 1
    workdir = make_workdir("ferryman-idle-")
    servers: list[Server] = []
    ok = False
    try:
        origin_port, nginx_port, ferryman_port = free_ports(3)
        write_origin_files(workdir)
        origin = start_nginx(
            "origin", workdir, origin_nginx_conf(workdir, origin_port), origin_port
        )
        servers.append(origin)
        wait_ready(origin, "/small")

        proxies: dict[str, Server] = {}
        nginx_kw: dict[str, Any] = {
            "worker_connections": args.conns + 1024,
            "keepalive_timeout": "300s",
            "extra_locations": NGINX_HEALTH,
        }
        for name in args.proxies:
            if name == "nginx" or args.fake_ferryman:
                port = nginx_port if name == "nginx" else ferryman_port
                conf = proxy_nginx_conf(workdir, name, port, origin_port, **nginx_kw)
                server = start_nginx(name, workdir, conf, port)
            else:
                fconf = ferryman_conf(
                    ferryman_port,
                    origin_port,
                    limits={
                        "max_connections": max(20000, args.conns + 1024),
                        "keepalive_timeout": "300s",
                    },
                    extra_routes=[HEALTH_ROUTE],
                )
                server = start_ferryman(name, workdir, fconf, ferryman_port)
            servers.append(server)
            proxies[name] = server
        for server in proxies.values():
            wait_ready(server, "/health")

        if args.fake_ferryman:
            print("*** --fake-ferryman: the 'ferryman' slot is a second nginx proxy ***")
        info = machine_info()
        print(f"machine: {machine_line(info)}; fd limit {limit}")
        results = [asyncio.run(measure(server, args)) for server in proxies.values()]

        print()
        print(render(results, args.conns, info, markdown=False))
        print()
        print(render(results, args.conns, info, markdown=True))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "meta": {
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "fake_ferryman": args.fake_ferryman,
                "machine": info,
                "conns": args.conns,
            },
            "results": [
                {**asdict(r), "delta_mb": r.delta_mb, "kib_per_conn": r.kib_per_conn}
                for r in results
            ],
        }
        args.output.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
        ok = True
        return 0
    except BenchError as e:
        print(f"idle_conns: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("idle_conns: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in reversed(servers):
            server.stop()
        if ok and not args.keep_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"temp dir kept: {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
