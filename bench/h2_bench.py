"""HTTPS + HTTP/2: Ferryman vs nginx, one worker each, TLS toward the client, the same nginx
origin over plain HTTP/1.1 keep-alive as ``bench/run.py``.

    .venv/bin/python bench/h2_bench.py [--requests 100000] [--clients 20] [--streams 10]
                                       [--rounds 1] [--download-mib 100] [--skip-download]

1. ``h2load -n N -c C -m M https://127.0.0.1:PORT/small`` against each proxy (TLS 1.3, ALPN
   h2, the same development certificate), after an untimed warm-up; req/s, failures, and the
   proxy's CPU time per request.
2. A large download through Ferryman over HTTP/1.1 and over HTTP/2 (curl, TLS both), best of
   three each: HTTP/2's flow control must not throttle it.

Prints a table and writes bench/results/h2.json. Every server is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import (
    HOST,
    REPO,
    RESULTS_DIR,
    BenchError,
    Server,
    ferryman_conf,
    find_tool,
    free_ports,
    install_sigterm_handler,
    machine_info,
    machine_line,
    make_workdir,
    origin_nginx_conf,
    proxy_nginx_conf,
    start_ferryman,
    start_nginx,
    table,
    wait_ready,
    write_origin_files,
)

sys.path.insert(0, str(REPO))
from ferryman.tls.certs import make_cert

UPSTREAM_KEEPALIVE = 256


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its children (nginx's master and worker), in seconds."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == root or int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tls_nginx_conf(
    workdir: Path, port: int, origin_port: int, cert: Path, key: Path, keepalive: int
) -> str:
    """``proxy_nginx_conf`` with its listener turned into TLS + HTTP/2 (nginx 1.22 syntax)."""
    conf = proxy_nginx_conf(workdir, "nginx", port, origin_port)
    plain = f"        listen {HOST}:{port};\n"
    if plain not in conf or "keepalive 64;" not in conf:
        raise BenchError("the nginx proxy config changed shape; update h2_bench.py")
    # -c 20 -m 10 keeps 200 requests in flight: both proxies keep that many idle upstream
    # connections, so neither pays for connections opened and closed under load.
    conf = conf.replace("keepalive 64;", f"keepalive {keepalive};")
    return conf.replace(
        plain,
        f"        listen {HOST}:{port} ssl http2;\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        ssl_session_cache shared:SSL:1m;\n"
        "        http2_max_concurrent_streams 128;\n",
    )


def wait_tls(server: Server, ca: Path, timeout: float = 15.0) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            with ctx.wrap_socket(
                socket.create_connection((HOST, server.port), timeout=1),
                server_hostname="localhost",
            ):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{server.name} did not accept TLS on {server.port}\n" + server.log_tail())


def h2load(port: int, n: int, c: int, m: int) -> dict[str, Any]:
    tool = find_tool("h2load", "/usr/bin/h2load")
    argv = [tool, "-n", str(n), "-c", str(c), "-m", str(m), f"https://localhost:{port}/small"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600).stdout
    finished = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not (finished and counts and codes):
        raise BenchError(f"cannot read h2load's output:\n{out}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {
        "req_per_s": float(finished.group(3)),
        "seconds": seconds,
        "succeeded": int(counts.group(4)),
        "failed": int(counts.group(5)),
        "errored": int(counts.group(6)),
        "status_2xx": int(codes.group(1)),
    }


def download(port: int, ca: Path, http: str, path: str) -> float:
    argv = [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download} %{http_code}",
        "--cacert", str(ca), http, f"https://localhost:{port}{path}",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    seconds, _size, code = out.split()
    if code != "200":
        raise BenchError(f"download over {http} answered {code}")
    return float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--download-mib", type=int, default=100)
    parser.add_argument("--skip-download", action="store_true")
    parser.add_argument(
        "--upstream-keepalive",
        type=int,
        default=UPSTREAM_KEEPALIVE,
        help="idle upstream connections kept by both proxies (run.py uses 64)",
    )
    args = parser.parse_args()
    install_sigterm_handler()
    workdir = make_workdir("ferryman-h2bench-")
    origin_port, nginx_port, ferryman_port = free_ports(3)
    cert, key = workdir / "localhost.pem", workdir / "localhost.key"
    make_cert(["localhost", HOST], cert, key, workdir / "ca")
    ca = workdir / "ca" / "ca.pem"
    write_origin_files(workdir)
    big = f"/{args.download_mib}m"
    if not args.skip_download:
        with open(workdir / "www" / big[1:], "wb") as f:
            f.truncate(args.download_mib << 20)
    servers: list[Server] = []
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat(), "machine": machine_info()}
    try:
        origin = start_nginx(
            "origin", workdir, origin_nginx_conf(workdir, origin_port), origin_port
        )
        servers.append(origin)
        wait_ready(origin, "/small")
        nginx = start_nginx(
            "nginx",
            workdir,
            tls_nginx_conf(workdir, nginx_port, origin_port, cert, key, args.upstream_keepalive),
            nginx_port,
        )
        servers.append(nginx)
        conf = ferryman_conf(ferryman_port, origin_port, limits={"keepalive_requests": 100000})
        conf["servers"][0]["tls"] = {"cert": str(cert), "key": str(key)}
        conf["upstreams"]["origin"]["keepalive"] = args.upstream_keepalive
        ferryman = start_ferryman("ferryman", workdir, conf, ferryman_port)
        servers.append(ferryman)
        for s in (nginx, ferryman):
            wait_tls(s, ca)
        runs: dict[str, list[dict[str, Any]]] = {"ferryman": [], "nginx": []}
        for proxy in (ferryman, nginx):
            h2load(proxy.port, 5000, args.clients, args.streams)  # warm-up
        for r in range(args.rounds):
            order = (ferryman, nginx) if r % 2 == 0 else (nginx, ferryman)
            for proxy in order:
                cpu0 = tree_cpu_seconds(proxy.pid)
                run = h2load(proxy.port, args.requests, args.clients, args.streams)
                cpu = tree_cpu_seconds(proxy.pid) - cpu0
                run["cpu_us_per_req"] = cpu * 1e6 / max(run["succeeded"], 1)
                runs[proxy.name].append(run)
                proxy.check_alive()
                print(
                    f"round {r + 1} {proxy.name:9} {run['req_per_s']:10.0f} req/s"
                    f"  failed {run['failed']}  errored {run['errored']}"
                    f"  cpu {run['cpu_us_per_req']:.0f} us/req",
                    flush=True,
                )
        result["h2load"] = {
            "args": {
                "n": args.requests,
                "c": args.clients,
                "m": args.streams,
                "upstream_keepalive": args.upstream_keepalive,
            },
            "runs": runs,
        }
        best = {k: max(x["req_per_s"] for x in v) for k, v in runs.items()}
        ratio = best["ferryman"] / best["nginx"]
        result["h2load"]["ratio"] = ratio
        rows = [
            [
                name,
                f"{best[name]:.0f}",
                str(sum(x["failed"] + x["errored"] for x in runs[name])),
                f"{min(x['cpu_us_per_req'] for x in runs[name]):.0f}",
            ]
            for name in ("ferryman", "nginx")
        ]
        header = ["proxy", "req/s", "failed", "CPU us/req"]
        print()
        print(
            f"h2load -n {args.requests} -c {args.clients} -m {args.streams}, TLS 1.3 + h2,"
            f" {args.upstream_keepalive} idle upstream connections"
        )
        print(table(header, rows, markdown=False))
        print(f"ferryman / nginx: {ratio:.2f}x")
        if not args.skip_download:
            times: dict[str, float] = {}
            for http in ("--http1.1", "--http2"):
                times[http] = min(download(ferryman.port, ca, http, big) for _ in range(3))
            mib = args.download_mib
            h1, h2 = times["--http1.1"], times["--http2"]
            result["download"] = {"mib": mib, "http1.1_s": h1, "http2_s": h2, "ratio": h2 / h1}
            print()
            print(
                f"{mib} MiB through Ferryman over TLS: HTTP/1.1 {h1:.2f}s ({mib / h1:.0f} MiB/s),"
                f" HTTP/2 {h2:.2f}s ({mib / h2:.0f} MiB/s), h2/h1 time {h2 / h1:.2f}"
            )
        print()
        print(machine_line(result["machine"]))
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "h2.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    except BenchError as e:
        print(f"h2_bench: {e}", file=sys.stderr)
        print(f"(files kept in {workdir})", file=sys.stderr)
        return 1
    finally:
        for s in reversed(servers):
            s.stop()


if __name__ == "__main__":
    sys.exit(main())
