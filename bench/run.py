"""Ferryman vs nginx as a reverse proxy, one worker each, in front of the same nginx origin.

    .venv/bin/python bench/run.py [--duration 10] [--rounds 3] [--only small,64k,1m]

Starts an nginx origin, an nginx proxy and a Ferryman proxy on free ports of 127.0.0.1, loads
each proxy with wrk in interleaved rounds, samples the proxy's processes from /proc, prints a
table (plain and markdown) and writes bench/results/latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchlib import (
    BODY_FILES,
    HOST,
    RESULTS_DIR,
    BenchError,
    OtherLoad,
    ProcSampler,
    Server,
    ferryman_conf,
    find_tool,
    free_ports,
    http_get,
    install_sigterm_handler,
    machine_info,
    machine_line,
    make_workdir,
    origin_nginx_conf,
    proxy_nginx_conf,
    start_ferryman,
    start_nginx,
    table,
    wait_quiet,
    wait_ready,
    write_origin_files,
)

SIZES = {"small": "/small", "64k": "/64k", "1m": "/1m"}
PROXIES = ("ferryman", "nginx")
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
MB = 1024 * 1024
OTHER_LOAD_WARN = 10.0  # % of one CPU used by other processes during a run


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


@dataclass
class Run:
    round: int
    size: str
    proxy: str
    wrk: WrkResult
    peak_rss_mb: float
    cpu_seconds: float
    cpu_us_per_req: float
    # CPU used by other processes on the machine during the run, in % of one CPU.
    other_cpu_pct: float


def _ms(value: str, unit: str) -> float:
    return float(value) * UNIT_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Pick the numbers out of ``wrk --latency`` output."""

    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, output, re.MULTILINE)
        if m is None:
            raise BenchError(f"cannot find {pattern!r} in wrk output:\n{output}")
        return m

    total = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    p50 = find(r"^\s*50(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    p99 = find(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    rps = find(r"^Requests/sec:\s+([\d.]+)")
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sock:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    return WrkResult(
        requests=int(total[1]),
        seconds=_ms(total[2], total[3]) / 1e3,
        rps=float(rps[1]),
        p50_ms=_ms(p50[1], p50[2]),
        p99_ms=_ms(p99[1], p99[2]),
        non_2xx=int(non2xx[1]) if non2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(wrk: str, args: argparse.Namespace, port: int, path: str, duration: int) -> str:
    argv = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency"]
    argv.append(f"http://{HOST}:{port}{path}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def measure(
    wrk: str, args: argparse.Namespace, server: Server, origin: Server, size: str, rnd: int
) -> Run:
    other = OtherLoad(server.pid, origin.pid)
    sampler = ProcSampler(server.pid, interval=0.2)
    sampler.start()
    try:
        out = run_wrk(wrk, args, server.port, SIZES[size], args.duration)
    finally:
        peak_rss, cpu_s = sampler.stop()
        other_pct = other.stop()
    server.check_alive()
    result = parse_wrk(out)
    per_req = cpu_s * 1e6 / result.requests if result.requests else float("nan")
    return Run(rnd, size, server.name, result, peak_rss / MB, cpu_s, per_req, other_pct)


def run_once(
    wrk: str, args: argparse.Namespace, server: Server, origin: Server, size: str, rnd: int
) -> Run:
    """One measured run; redone up to ``--retry-busy`` times while the machine was busy, keeping
    the attempt with the least other load."""
    best: Run | None = None
    for attempt in range(args.retry_busy + 1):
        if attempt:
            print("  (other load above the limit: running it again)", flush=True)
        time.sleep(args.pause)
        if args.wait_quiet > 0 and not wait_quiet(args.wait_quiet, OTHER_LOAD_WARN):
            print(f"  (machine still busy after {args.wait_quiet:g}s: running anyway)")
        run = measure(wrk, args, server, origin, size, rnd)
        w = run.wrk
        print(
            f"[round {rnd}/{args.rounds}] {size:5} {server.name:8} {w.rps:10,.0f} req/s"
            f"  p99 {w.p99_ms:7.2f} ms  rss {run.peak_rss_mb:6.1f} MB"
            f"  cpu {run.cpu_us_per_req:6.1f} us/req  errors {w.errors}"
            f"  other load {run.other_cpu_pct:3.0f}%",
            flush=True,
        )
        if best is None or run.other_cpu_pct < best.other_cpu_pct:
            best = run
        if run.other_cpu_pct <= OTHER_LOAD_WARN:
            break
    assert best is not None
    return best


def sanity_check(proxies: dict[str, Server], origin: Server, sizes: list[str]) -> None:
    """Each proxy returns the origin's exact body with our X-Proxy header, before we time it."""
    for size in sizes:
        want = http_get(origin.port, SIZES[size]).body
        expected_len = BODY_FILES.get(size, len(b"hello world\n"))
        if len(want) != expected_len:
            raise BenchError(f"origin returned {len(want)} bytes for {SIZES[size]}")
        for name, server in proxies.items():
            resp = http_get(server.port, SIZES[size], timeout=10)
            problems = []
            if resp.status != 200:
                problems.append(f"status {resp.status}")
            if resp.body != want:
                problems.append(f"body differs ({len(resp.body)} bytes, want {len(want)})")
            if resp.headers.get("x-proxy") != "ferryman-bench":
                problems.append(f"X-Proxy header is {resp.headers.get('x-proxy')!r}")
            if problems:
                raise BenchError(f"{name} GET {SIZES[size]}: " + "; ".join(problems))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[Run], sizes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        per: dict[str, Any] = {}
        for proxy in PROXIES:
            rs = [r for r in runs if r.size == size and r.proxy == proxy]
            per[proxy] = {
                "rps_median": _median([r.wrk.rps for r in rs]),
                "p99_ms_median": _median([r.wrk.p99_ms for r in rs]),
                "peak_rss_mb": max((r.peak_rss_mb for r in rs), default=float("nan")),
                "cpu_us_per_req_median": _median([r.cpu_us_per_req for r in rs]),
                "errors": sum(r.wrk.errors for r in rs),
                "other_load_max_pct": max((r.other_cpu_pct for r in rs), default=float("nan")),
            }
        rounds = sorted({r.round for r in runs if r.size == size})
        rps_ratios, p99_ratios = [], []
        for rnd in rounds:
            pair = {r.proxy: r for r in runs if r.size == size and r.round == rnd}
            f, n = pair["ferryman"].wrk, pair["nginx"].wrk
            rps_ratios.append(f.rps / n.rps if n.rps else float("nan"))
            p99_ratios.append(f.p99_ms / n.p99_ms if n.p99_ms else float("nan"))
        per["ratio"] = {
            "rps_per_round": rps_ratios,
            "rps_median": _median(rps_ratios),
            "p99_per_round": p99_ratios,
            "p99_median": _median(p99_ratios),
        }
        out[size] = per
    return out


def render(summary: dict[str, Any], meta: dict[str, Any], markdown: bool) -> str:
    labels = {"ferryman": "Ferryman", "nginx": "nginx"}
    if meta["fake_ferryman"]:
        labels["ferryman"] = "Ferryman (FAKE: nginx)"
    main_rows, ratio_rows = [], []
    for size, per in summary.items():
        for proxy in PROXIES:
            s = per[proxy]
            main_rows.append(
                [
                    size,
                    labels[proxy],
                    f"{s['rps_median']:,.0f}",
                    f"{s['p99_ms_median']:.2f}",
                    f"{s['peak_rss_mb']:.1f}",
                    f"{s['cpu_us_per_req_median']:.1f}",
                    str(s["errors"]),
                ]
            )
        ratio = per["ratio"]
        ratio_rows.append(
            [
                size,
                " ".join(f"{x:.2f}" for x in ratio["rps_per_round"]),
                f"{ratio['rps_median']:.2f}",
                " ".join(f"{x:.2f}" for x in ratio["p99_per_round"]),
                f"{ratio['p99_median']:.2f}",
            ]
        )
    main = table(
        ["body", "proxy", "req/s", "p99 ms", "peak RSS MB", "CPU us/req", "errors"],
        main_rows,
        left=2,
        markdown=markdown,
    )
    ratios = table(
        [
            "body",
            "Ferryman/nginx req/s per round",
            "median",
            "Ferryman/nginx p99 per round",
            "median",
        ],
        ratio_rows,
        left=2,
        markdown=markdown,
    )
    a = meta["args"]
    load = (
        f"wrk -t{a['threads']} -c{a['connections']} -d{a['duration']}s --latency, "
        f"{a['rounds']} interleaved rounds; medians over rounds, peak RSS over rounds "
        "(VmRSS summed over the proxy's processes), CPU = utime+stime of the proxy's processes"
    )
    other = max(per[p]["other_load_max_pct"] for per in summary.values() for p in PROXIES)
    load += f"; other processes used up to {other:.0f}% of a CPU during a run"
    if not markdown:
        return f"{main}\n\n{ratios}\n"
    return (
        "### Reverse proxy throughput: Ferryman vs nginx, 1 worker each\n\n"
        f"Machine: {machine_line(meta['machine'])}  \n"
        f"Load: {load}.\n\n{main}\n\n{ratios}\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per body size (default 3)")
    p.add_argument(
        "--only",
        default=",".join(SIZES),
        help="comma-separated body sizes to run: small,64k,1m (default all)",
    )
    p.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed wrk seconds per proxy and size (default 2)"
    )
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs (default 1)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for the machine to be idle (default: no wait)",
    )
    p.add_argument(
        "--retry-busy",
        type=int,
        default=0,
        metavar="N",
        help=f"redo a run up to N times when other load was above {OTHER_LOAD_WARN:.0f}%%"
        " of a CPU (default 0)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "latest.json", help=argparse.SUPPRESS
    )
    # Testing the harness itself: a second nginx proxy takes Ferryman's place.
    p.add_argument("--fake-ferryman", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        p.error(f"--only takes a list of {', '.join(SIZES)}; got {args.only!r}")
    args.sizes = sizes
    if args.duration < 1 or args.rounds < 1:
        p.error("--duration and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_sigterm_handler()
    wrk = find_tool("wrk", "/usr/bin/wrk")
    workdir = make_workdir("ferryman-bench-")
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

        conf = proxy_nginx_conf(workdir, "nginx", nginx_port, origin_port)
        nginx = start_nginx("nginx", workdir, conf, nginx_port)
        servers.append(nginx)
        if args.fake_ferryman:
            conf = proxy_nginx_conf(workdir, "ferryman", ferryman_port, origin_port)
            ferryman = start_nginx("ferryman", workdir, conf, ferryman_port)
        else:
            # keepalive_requests matches the nginx proxy's client side (Ferryman's default: 1000).
            fconf = ferryman_conf(ferryman_port, origin_port, limits={"keepalive_requests": 100000})
            ferryman = start_ferryman("ferryman", workdir, fconf, ferryman_port)
        servers.append(ferryman)
        wait_ready(nginx, "/small")
        wait_ready(ferryman, "/small")
        proxies = {"ferryman": ferryman, "nginx": nginx}
        sanity_check(proxies, origin, args.sizes)

        meta: dict[str, Any] = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "fake_ferryman": args.fake_ferryman,
            "machine": machine_info(),
            "args": {
                k: v for k, v in vars(args).items() if k not in ("output", "only", "fake_ferryman")
            },
            "pids": {name: s.pid for name, s in proxies.items()},
        }
        if args.fake_ferryman:
            print("*** --fake-ferryman: the 'ferryman' slot is a second nginx proxy ***")
        print(f"machine: {machine_line(meta['machine'])}")
        print(f"temp dir: {workdir}")
        per_run = args.duration + args.pause
        total = len(args.sizes) * 2 * (args.warmup + args.rounds * per_run)
        print(f"about {total / 60:.1f} min: sizes {','.join(args.sizes)}, {args.rounds} rounds")

        if args.warmup > 0:
            for size in args.sizes:
                for server in proxies.values():
                    run_wrk(wrk, args, server.port, SIZES[size], args.warmup)
                    server.check_alive()

        runs: list[Run] = []
        for rnd in range(1, args.rounds + 1):
            # Alternate who goes first so that neither proxy always runs on a warmer machine.
            order = PROXIES if rnd % 2 else PROXIES[::-1]
            for size in args.sizes:
                for name in order:
                    runs.append(run_once(wrk, args, proxies[name], origin, size, rnd))

        summary = summarize(runs, args.sizes)
        print()
        print(render(summary, meta, markdown=False))
        print(render(summary, meta, markdown=True))
        for r in runs:
            if r.wrk.errors:
                print(
                    f"WARNING: round {r.round} {r.size} {r.proxy}: {r.wrk.errors} errors in"
                    f" {r.wrk.requests} requests (non-2xx/3xx {r.wrk.non_2xx}, socket"
                    f" {r.wrk.socket_errors}); its req/s and latency are not meaningful.",
                    file=sys.stderr,
                )
        busy = [r for r in runs if r.other_cpu_pct > OTHER_LOAD_WARN]
        if busy:
            worst = max(r.other_cpu_pct for r in busy)
            print(
                f"WARNING: during {len(busy)} of {len(runs)} runs other processes used more than"
                f" {OTHER_LOAD_WARN:.0f}% of a CPU (up to {worst:.0f}%); the machine was not"
                " quiet, so these figures are unreliable.",
                file=sys.stderr,
            )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
        ok = True
        return 0
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
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
