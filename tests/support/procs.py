"""Starting and stopping the real processes tests talk to: Ferryman and origin servers.

Every process is stopped by its PID in a fixture's cleanup, never by name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(
    host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class Proc:
    """A child process with its output in files, stopped by PID."""

    def __init__(self, args: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"ferryman-{name}-"))
        self.stdout_path = self.dir / "stdout"
        self.stderr_path = self.dir / "stderr"
        self._out = open(self.stdout_path, "wb")  # noqa: SIM115
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            args, stdout=self._out, stderr=self._err, cwd=ROOT, env=full_env
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()
        self._err.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def start_origin(port: int, name: str, host: str = "127.0.0.1") -> Proc:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    proc = Proc(
        [PYTHON, "-m", "tests.support.origin", "--listen", address, "--name", name],
        f"origin-{name}",
    )
    wait_port(host, port, proc=proc.popen)
    return proc


def start_ferryman(
    config: str | Path, wait: tuple[str, int] | None, *extra: str, workers: int = 1
) -> Proc:
    """Run ``ferryman run`` on a config file (a path, or YAML text written to a file)."""
    if isinstance(config, str) and "\n" in config:
        path = Path(tempfile.mkdtemp(prefix="ferryman-conf-")) / "ferryman.yaml"
        path.write_text(config)
        config = path
    args = [PYTHON, "-m", "ferryman", "run", "-c", str(config), "--workers", str(workers), *extra]
    proc = Proc(args, "ferryman")
    if wait is not None:
        try:
            wait_port(wait[0], wait[1], proc=proc.popen)
        except Exception:
            proc.stop()
            raise RuntimeError(f"ferryman did not start: {proc.stderr()}") from None
    return proc
