"""Shared pieces of the benchmarks: configs, starting and stopping servers, /proc sampling.

Everything here talks to 127.0.0.1 only and stops what it started by PID.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class BenchError(Exception):
    """A benchmark that cannot go on; ``str()`` is the message for the operator."""


def install_sigterm_handler() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C so that ``finally`` blocks stop the servers."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); return the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def make_workdir(prefix: str) -> Path:
    """A fresh temp dir, world-readable so that nginx workers running as ``nobody`` (when the
    benchmark runs as root) can read the files and temp dirs in it."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    return workdir


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all bound at once, then released)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_tool(name: str, fallback: str) -> str:
    path = shutil.which(name) or fallback
    if not os.access(path, os.X_OK):
        raise BenchError(f"{name} not found (looked in PATH and {fallback})")
    return path


def ferryman_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --------------------------------------------------------------------------------------------
# /proc


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)``: index 0 is field 3 (state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """Start time of a live process (field 22), None if it is gone or a zombie."""
    fields = _read_stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process, in clock ticks."""
    fields = _read_stat(pid)
    return int(fields[11]) + int(fields[12]) if fields else None  # fields 14, 15


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # gone, or a zombie / kernel thread without VmRSS


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _read_stat(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def worker_pids(root: int) -> list[int]:
    """The processes that serve traffic: the children of a master, or the process itself."""
    return [p for p in process_tree(root) if p != root] or [root]


def tree_cpu_seconds(root: int) -> float:
    """utime + stime summed over a process tree, in seconds."""
    return sum(cpu_ticks(p) or 0 for p in process_tree(root)) / CLK_TCK


def system_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (/proc/stat), in seconds.

    user + nice + system + irq + softirq: without IRQ time accounting the kernel charges the
    softirq work of loopback traffic to the process that happened to be running (its stime),
    while /proc/stat counts it as softirq. Idle, iowait and steal are left out.
    """
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / CLK_TCK


class OtherLoad:
    """CPU used on the machine by anything but the processes we know about, during a run.

    The machine may be shared; a run during which something else was busy is worth less.
    Known: the trees given to ``stop()``, this process and the children it waited for (wrk).
    """

    def __init__(self, *roots: int) -> None:
        self.roots = roots
        self._t0 = time.monotonic()
        self._system = system_cpu_seconds()
        self._known = self._known_seconds()

    def _known_seconds(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        rusage = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return rusage + sum(tree_cpu_seconds(r) for r in self.roots)

    def stop(self) -> float:
        """Percent of one CPU used by others since construction (can be slightly negative)."""
        wall = time.monotonic() - self._t0
        system = system_cpu_seconds() - self._system
        known = self._known_seconds() - self._known
        return 100.0 * (system - known) / wall if wall > 0 else 0.0


def wait_quiet(max_seconds: float, threshold_pct: float, window: float = 2.0) -> bool:
    """Wait up to ``max_seconds`` for a ``window`` in which the whole machine is busy less than
    ``threshold_pct`` of one CPU. True if it got quiet."""
    deadline = time.monotonic() + max_seconds
    while True:
        before = system_cpu_seconds()
        time.sleep(window)
        if (system_cpu_seconds() - before) * 100.0 / window < threshold_pct:
            return True
        if time.monotonic() >= deadline:
            return False


class ProcSampler:
    """Peak RSS and CPU time of a process tree while a load runs, from /proc.

    RSS is VmRSS summed over the tree, sampled every ``interval`` seconds; the peak is kept.
    CPU is utime+stime summed over the tree: the last value seen for each process minus its
    value at ``start()`` (0 for processes born later), so processes that exit still count.
    """

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.samples = 0
        self._base: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def _sample(self) -> dict[tuple[int, int], int]:
        rss = 0
        ticks: dict[tuple[int, int], int] = {}
        for pid in process_tree(self.root):
            fields = _read_stat(pid)
            if not fields:
                continue
            ticks[(pid, int(fields[19]))] = int(fields[11]) + int(fields[12])
            rss += rss_bytes(pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.samples += 1
        self._last.update(ticks)
        return ticks

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._base = self._sample()
        self._thread.start()

    def stop(self) -> tuple[int, float]:
        """Stop sampling; return (peak RSS in bytes, CPU seconds used since ``start()``)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        ticks = sum(last - self._base.get(key, 0) for key, last in self._last.items())
        return self.peak_rss, ticks / CLK_TCK


# --------------------------------------------------------------------------------------------
# servers


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Server:
    """A server process this benchmark started, and how to reach it."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    logs: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"--- {p}\n{tail(p, lines)}" for p in self.logs)

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} (pid {self.pid}) exited with code {self.proc.returncode}\n"
                + self.log_tail()
            )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL on timeout; then SIGKILL any descendant left behind.

        Descendants are identified by PID *and* start time, so a reused PID is never hit.
        """
        descendants = [
            (pid, proc_start_time(pid)) for pid in process_tree(self.pid) if pid != self.pid
        ]
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        for pid, started in descendants:
            while started is not None and proc_start_time(pid) == started:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)


def _spawn(name: str, port: int, argv: list[str], log: Path, **kw: Any) -> Server:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the servers in order
            **kw,
        )
    return Server(name=name, port=port, proc=proc, logs=[log])


def start_nginx(name: str, workdir: Path, conf: str, port: int) -> Server:
    nginx = find_tool("nginx", "/usr/sbin/nginx")
    (workdir / f"{name}-temp").mkdir(mode=0o755, exist_ok=True)
    conf_path = workdir / f"{name}.conf"
    conf_path.write_text(conf, encoding="utf-8")
    err = workdir / f"{name}.error.log"
    argv = [nginx, "-p", str(workdir), "-c", str(conf_path), "-e", str(err), "-g", "daemon off;"]
    server = _spawn(name, port, argv, workdir / f"{name}.out")
    server.logs.append(err)
    return server


def start_ferryman(name: str, workdir: Path, conf: dict[str, Any], port: int) -> Server:
    conf_path = workdir / f"{name}.yaml"
    conf_path.write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")
    argv = [ferryman_python(), "-m", "ferryman", "run", "-c", str(conf_path), "--workers", "1"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return _spawn(name, port, argv, workdir / f"{name}.log", cwd=str(REPO), env=env)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def http_get(port: int, path: str, timeout: float = 5.0) -> Response:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return Response(resp.status, headers, body)
    finally:
        conn.close()


def wait_ready(server: Server, path: str, timeout: float = 15.0) -> None:
    """Wait until ``server`` accepts a connection and answers GET ``path`` with 200."""
    deadline = time.monotonic() + timeout
    last = "no attempt yet"
    while time.monotonic() < deadline:
        if not server.alive():
            raise BenchError(
                f"{server.name} exited with code {server.proc.returncode} before it was ready\n"
                + server.log_tail()
            )
        try:
            socket.create_connection((HOST, server.port), timeout=1.0).close()
            resp = http_get(server.port, path, timeout=2.0)
            if resp.status == 200:
                return
            last = f"GET {path} returned {resp.status}"
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise BenchError(
        f"{server.name} (pid {server.pid}) not ready on {HOST}:{server.port} after {timeout:g}s"
        f" ({last})\n" + server.log_tail()
    )


# --------------------------------------------------------------------------------------------
# configs


def _temp_paths(workdir: Path, name: str) -> str:
    base = workdir / f"{name}-temp"
    return "\n".join(f"    {kind}_temp_path {base / kind};" for kind in NGINX_TEMP_KINDS)


def _nginx_main(workdir: Path, name: str, worker_connections: int) -> str:
    return f"""\
worker_processes 1;
master_process on;
pid {workdir / (name + ".pid")};
error_log {workdir / (name + ".error.log")} error;

events {{
    worker_connections {worker_connections};
}}
"""


def origin_nginx_conf(workdir: Path, port: int) -> str:
    """The origin: a small body at /small, files at /64k and /1m (see ``write_origin_files``)."""
    return (
        _nginx_main(workdir, "origin", 4096)
        + f"""
http {{
    access_log off;
    default_type text/plain;
    sendfile on;
    keepalive_requests 100000;
{_temp_paths(workdir, "origin")}

    server {{
        listen {HOST}:{port};
        server_name _;
        location = /small {{
            return 200 "hello world\\n";
        }}
        location / {{
            root {workdir / "www"};
        }}
    }}
}}
"""
    )


BODY_FILES = {"64k": 64 * 1024, "1m": 1024 * 1024}


def write_origin_files(workdir: Path) -> None:
    www = workdir / "www"
    www.mkdir(mode=0o755)
    line = b"ferryman benchmark body 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKL\n"
    for name, size in BODY_FILES.items():
        data = (line * (size // len(line) + 1))[:size]
        (www / name).write_bytes(data)
        (www / name).chmod(0o644)


def proxy_nginx_conf(
    workdir: Path,
    name: str,
    port: int,
    origin_port: int,
    *,
    worker_connections: int = 4096,
    keepalive_timeout: str = "75s",
    extra_locations: str = "",
) -> str:
    """nginx as a reverse proxy, configured like the Ferryman config next to it."""
    return (
        _nginx_main(workdir, name, worker_connections)
        + f"""
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout {keepalive_timeout};
{_temp_paths(workdir, name)}

    upstream origin {{
        server {HOST}:{origin_port};
        keepalive 64;
        # Both proxies keep their upstream connections for the whole run (the client side
        # has the same setting): a connection recycled every 1000 requests spends its life
        # in TCP's start-up modes, a kernel cost that is not the proxy's.
        keepalive_requests 100000;
    }}

    server {{
        listen {HOST}:{port};
        server_name _;
        add_header X-Proxy ferryman-bench always;
{extra_locations}
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Ferryman passes the client's Host by default (proxy.host: pass); do the same.
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffers 8 64k;
        }}
    }}
}}
"""
    )


def ferryman_conf(
    port: int,
    origin_port: int,
    *,
    limits: dict[str, Any] | None = None,
    extra_routes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Ferryman config matching ``proxy_nginx_conf`` (X-Forwarded-* are on by default)."""
    server: dict[str, Any] = {
        "listen": [f"{HOST}:{port}"],
        "default": True,
        "response_headers": {"set": {"X-Proxy": "ferryman-bench"}},
        "routes": [*(extra_routes or []), {"path": "/", "proxy": {"upstream": "origin"}}],
    }
    conf: dict[str, Any] = {"workers": 1}
    if limits:
        conf["limits"] = limits
    conf["log"] = {"access": {"enabled": False}}
    conf["upstreams"] = {
        "origin": {
            "keepalive": 64,
            "keepalive_requests": 100000,  # as nginx's upstream block
            "servers": [{"address": f"{HOST}:{origin_port}"}],
        }
    }
    conf["servers"] = [server]
    return conf


# --------------------------------------------------------------------------------------------
# output


def table(header: list[str], rows: list[list[str]], *, left: int = 1, markdown: bool) -> str:
    """A plain-text or markdown table; the first ``left`` columns are left-aligned."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |"]
        lines.append(
            "|" + "|".join(":---" if i < left else "---:" for i in range(len(header))) + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(
            x.ljust(w) if i < left else x.rjust(w)
            for i, (x, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    )


# --------------------------------------------------------------------------------------------
# machine info


def _command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return (done.stdout + done.stderr).strip()


def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nginx_v = _command_output([find_tool("nginx", "/usr/sbin/nginx"), "-v"])
    wrk_v = _command_output(["wrk", "-v"]).splitlines()
    wrk_line = wrk_v[0].split(" Copyright")[0] if wrk_v else "wrk unknown"
    return {
        "nproc": _command_output(["nproc"]),
        "cpu": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "nginx": nginx_v.removeprefix("nginx version: "),
        "wrk": wrk_line,
        "ferryman": _command_output([ferryman_python(), "-m", "ferryman", "version"]),
    }


def machine_line(info: dict[str, str]) -> str:
    return (
        f"{info['nproc']} CPUs ({info['cpu']}), {info['kernel']}, Python {info['python']}, "
        f"{info['nginx']}, {info['wrk']}, {info.get('ferryman', 'ferryman unknown')}"
    )
