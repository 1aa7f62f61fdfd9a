"""Forward-proxy throughput: big downloads through CONNECT and SOCKS5 tunnels vs direct.

    .venv/bin/python bench/forward_throughput.py            # 1 GiB, 200 x 10 MiB
    .venv/bin/python bench/forward_throughput.py --size 256m --tunnels 50 --each 4m

Everything runs on loopback: a byte source (its own process, uvloop, honouring
backpressure), one Ferryman worker with a forward listener and a SOCKS5 listener, and the
client in this process. The source speaks a one-line protocol: the client sends ``N\\n``,
the source sends N bytes and closes, so what is measured is the tunnel, not HTTP parsing.

Reported (medians of interleaved rounds, so other load on the machine hits every path
alike): MiB/s per path and the ratio to direct, the proxy's CPU time over the transfer
(user+system, from /proc) as a share of one core, and its RSS after and at peak. For scale,
``relay_floor`` is the cheapest possible relay (a thread per direction doing recv_into and
sendall): on a machine with few cores the client, the source and any relay compete for
them, and no user-space relay can beat that floor.
Then ``--tunnels`` concurrent tunnels each moving ``--each`` bytes, through CONNECT and
through SOCKS5, checked byte for byte by count; any short read or error is reported.
Results go to stdout and, as JSON, to ``bench/results/forward_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferryman.config.units import parse_size  # noqa: E402

CHUNK = 256 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


# the byte source (run with --source PORT in a child process)


def run_source(port: int) -> None:
    import uvloop

    block = memoryview(b"\x5a" * CHUNK)

    class Source(asyncio.Protocol):
        def __init__(self) -> None:
            self.left = 0
            self.paused = False
            self.head = b""
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            if self.left:
                return
            self.head += data
            if self.head.startswith(b"GET /") and b"\r\n\r\n" in self.head:
                # An HTTP client (curl): GET /<bytes> answers that many bytes.
                self.left = int(self.head.split(b" ", 2)[1][1:])
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % self.left
                )
                self.pump()
            elif not self.head.startswith(b"G") and b"\n" in self.head:
                self.left = int(self.head.split(b"\n", 1)[0])
                self.pump()

        def pump(self) -> None:
            t = self.transport
            assert t is not None
            while self.left and not self.paused:
                n = min(self.left, CHUNK)
                t.write(block[:n])
                self.left -= n
            if not self.left:
                t.close()

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            self.pump()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Source, "127.0.0.1", port, backlog=1024)
        async with server:
            await asyncio.Event().wait()

    uvloop.run(main())


def run_relay(port: int, target: int) -> None:
    """The floor any user-space relay pays here: a thread per direction, recv_into and
    sendall, no parsing, no policy. Run for comparison, as "relay_floor"."""
    import threading

    def pump(a: socket.socket, b: socket.socket) -> None:
        view = memoryview(bytearray(CHUNK))
        try:
            while n := a.recv_into(view):
                b.sendall(view[:n])
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def serve(client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", target))
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        pump(upstream, client)

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


# the proxy


STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def start_nginx_stream(port: int, target: int) -> subprocess.Popen[bytes] | None:
    """nginx's stream proxy as a relay written in C, when Debian's libnginx-mod-stream is
    installed: what a relay pays on this machine with no Python at all."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not STREAM_MODULE.exists() or not os.path.exists(nginx):
        return None
    tmp = Path(tempfile.mkdtemp(prefix="ferryman-stream-"))
    (tmp / "nginx.conf").write_text(
        f"load_module {STREAM_MODULE};\n"
        f"worker_processes 1;\nerror_log {tmp}/error.log;\npid {tmp}/nginx.pid;\n"
        "events { worker_connections 1024; }\n"
        f"stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{target}; }} }}\n"
    )
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"]
    )
    wait_port(port)
    return proc


def worker_pid(master: int) -> int:
    """nginx's first worker, whose CPU is the relay's."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0]) if children else master


def start_proxy(source_port: int, http_port: int, socks_port: int) -> subprocess.Popen[bytes]:
    config = f"""workers: 1
log: {{level: warning}}
forward:
  listen: ["127.0.0.1:{http_port}"]
  socks5_listen: ["127.0.0.1:{socks_port}"]
  allow_destinations: [127.0.0.1]
  connect_ports: [{source_port}]
  default_action: allow
  access_log: {{enabled: false}}
"""
    path = Path(tempfile.mkdtemp(prefix="ferryman-bench-")) / "forward.yaml"
    path.write_text(config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferryman", "run", "-c", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_port(http_port)
    wait_port(socks_port)
    return proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


# opening a stream three ways (blocking sockets, for the single big download)


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("proxy closed during CONNECT")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode("latin-1"))
    assert not rest
    return head


def open_direct(_: int, port: int) -> socket.socket:
    """Straight to ``port``: the source itself, or the reference relay in front of it."""
    return socket.create_connection(("127.0.0.1", port))


def open_connect(port: int, proxy: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy))
    target = f"127.0.0.1:{port}".encode()
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    _read_head(s)
    return s


def open_socks(port: int, proxy: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy))
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big"))
    reply = s.recv(10)
    if reply[1] != 0:
        raise ConnectionError(f"SOCKS5 reply {reply[1]}")
    return s


def download(sock: socket.socket, size: int) -> int:
    sock.sendall(b"%d\n" % size)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    while True:
        n = sock.recv_into(view)
        if not n:
            break
        got += n
    sock.close()
    return got


def one_download(opener, source: int, proxy: int, size: int, pid: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds, proxy CPU seconds) of one download."""
    sock = opener(source, proxy)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    got = download(sock, size)
    wall = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"got {got} of {size} bytes")
    return wall, cpu_seconds(pid) - cpu0


def singles(
    ports: dict[str, int], source: int, size: int, pids: dict[str, int], rounds: int
) -> dict[str, dict[str, float]]:
    """Direct, relayed, CONNECT and SOCKS5 downloads interleaved for ``rounds`` rounds, so
    load from anything else on the machine hits them alike; medians are reported. The CPU is
    that of the process in the middle (the relay's for ``relay_floor``, Ferryman's else)."""
    openers = {
        "direct": open_direct,
        "relay_floor": open_direct,
        "nginx_stream": open_direct,
        "connect": open_connect,
        "socks5": open_socks,
    }
    openers = {k: v for k, v in openers.items() if k in ports}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in openers}
    for _ in range(rounds):
        for name, opener in openers.items():
            runs[name].append(one_download(opener, source, ports[name], size, pids[name]))
    out: dict[str, dict[str, float]] = {}
    for name, samples in runs.items():
        walls = sorted(w for w, _ in samples)
        wall = walls[len(walls) // 2]
        cpu = sorted(c for _, c in samples)[len(samples) // 2]
        out[name] = {
            "median_seconds": round(wall, 3),
            "median_mib_s": round(size / wall / (1 << 20), 1),
            "best_mib_s": round(size / walls[0] / (1 << 20), 1),
            "middle_cpu_s": round(cpu, 3),
            "middle_cpu_pct_of_core": round(100 * cpu / wall, 1),
        }
    for name in ("relay_floor", "nginx_stream", "connect", "socks5"):
        if name not in out:
            continue
        out[name]["ratio_to_direct"] = round(
            out[name]["median_mib_s"] / out["direct"]["median_mib_s"], 3
        )
    return out


def with_curl(
    source: int, http_port: int, socks_port: int, size: int, rounds: int
) -> dict[str, object]:
    """The same download by curl, a client that does something with what it reads, as
    users' clients do: direct, through CONNECT (``-p -x``) and through SOCKS5."""
    url = f"http://127.0.0.1:{source}/{size}"
    ways = {
        "direct": [],
        "connect": ["-p", "-x", f"http://127.0.0.1:{http_port}"],
        "socks5": ["--socks5-hostname", f"127.0.0.1:{socks_port}"],
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, extra in ways.items():
            out = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{time_total} %{size_download}",
                    *extra,
                    url,
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            if int(float(out[1])) != size:
                raise RuntimeError(f"curl {name}: got {out[1]} of {size} bytes")
            times[name].append(float(out[0]))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {
        name: {
            "median_seconds": round(med[name], 3),
            "median_mib_s": round(size / med[name] / (1 << 20), 1),
            "ratio_to_direct": round(med["direct"] / med[name], 3),
        }
        for name in ways
    }


# many tunnels at once (asyncio client)


async def many(kind: str, source: int, proxy: int, tunnels: int, each: int) -> dict[str, object]:
    errors: list[str] = []
    total = 0

    async def one(i: int) -> None:
        nonlocal total
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy, limit=1 << 20)
            if kind == "connect":
                target = f"127.0.0.1:{source}".encode()
                writer.write(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(head[:40].decode("latin-1"))
            else:
                writer.write(b"\x05\x01\x00")
                assert await reader.readexactly(2) == b"\x05\x00"
                addr = socket.inet_aton("127.0.0.1") + source.to_bytes(2, "big")
                writer.write(b"\x05\x01\x00\x01" + addr)
                reply = await reader.readexactly(10)
                if reply[1] != 0:
                    raise ConnectionError(f"SOCKS5 reply {reply[1]}")
            writer.write(b"%d\n" % each)
            got = 0
            while chunk := await reader.read(1 << 20):
                got += len(chunk)
            writer.close()
            if got != each:
                raise ConnectionError(f"tunnel {i}: {got} of {each} bytes")
            total += got
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(tunnels)))
    wall = time.perf_counter() - t0
    return {
        "tunnels": tunnels,
        "bytes_each": each,
        "seconds": round(wall, 3),
        "mib_s": round(total / wall / (1 << 20), 1),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1g", help="single download size (default 1g)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--each", default="10m", help="bytes per concurrent tunnel")
    parser.add_argument("--source", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.source:
        run_source(args.source)
        return
    if args.relay:
        listen, target = args.relay.split(":")
        run_relay(int(listen), int(target))
        return
    size, each = parse_size(args.size), parse_size(args.each)
    source_port, http_port, socks_port = free_port(), free_port(), free_port()
    relay_port = free_port()
    source = subprocess.Popen([sys.executable, __file__, "--source", str(source_port)])
    relay = subprocess.Popen([sys.executable, __file__, "--relay", f"{relay_port}:{source_port}"])
    proxy: subprocess.Popen[bytes] | None = None
    stream: subprocess.Popen[bytes] | None = None
    try:
        wait_port(source_port)
        wait_port(relay_port)
        proxy = start_proxy(source_port, http_port, socks_port)
        pid = proxy.pid
        rss0, _ = memory(pid)
        results: dict[str, object] = {"size": size, "proxy_rss_idle_kib": rss0}
        ports = {"direct": source_port, "relay_floor": relay_port}
        ports.update(connect=http_port, socks5=socks_port)
        pids = {"direct": pid, "relay_floor": relay.pid, "connect": pid, "socks5": pid}
        stream_port = free_port()
        stream = start_nginx_stream(stream_port, source_port)
        if stream is not None:
            ports["nginx_stream"] = stream_port
            pids["nginx_stream"] = worker_pid(stream.pid)
        results.update(singles(ports, source_port, size, pids, args.rounds))
        results["proxy_rss_after_single_kib"] = memory(pid)[0]
        if shutil.which("curl"):
            results["curl"] = with_curl(source_port, http_port, socks_port, size, args.rounds)
        import uvloop

        for kind, port in (("connect", http_port), ("socks5", socks_port)):
            cpu0 = cpu_seconds(pid)
            r2 = uvloop.run(many(kind, source_port, port, args.tunnels, each))
            r2["proxy_cpu_s"] = round(cpu_seconds(pid) - cpu0, 3)
            rss, peak = memory(pid)
            r2["proxy_rss_kib"], r2["proxy_peak_rss_kib"] = rss, peak
            results[f"concurrent_{kind}"] = r2
        print(json.dumps(results, indent=2))
        out = ROOT / "bench" / "results" / "forward_throughput.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        for p in (proxy, relay, source, stream):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
