"""Several workers sharing each port through SO_REUSEPORT, nginx-style.

The master forks the workers, forwards SIGTERM/SIGINT to them (each drains and exits 0),
and starts a new worker when one dies unexpectedly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from ferryman.build import Runtime
from ferryman.config.schema import Config
from ferryman.server.worker import run_worker

log = logging.getLogger("ferryman")


def run_master(config: Config, workers: int) -> int:
    runtime = Runtime(config)  # builds once here so config errors surface before forking
    del runtime
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(config)
            except Exception:
                log.exception("worker failed")
            finally:
                os._exit(code)
        children[pid] = slot

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for slot in range(workers):
        spawn(slot)
    log.info("master %d started %d workers", os.getpid(), workers)
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, -1)
        if slot < 0 or stopping:
            continue
        log.error("worker %d exited with status %d; starting another", pid, status)
        failures += 1
        if failures > 10:
            log.error("workers keep dying; stopping")
            on_signal(signal.SIGTERM, None)
            continue
        time.sleep(0.2)
        spawn(slot)
    return 0
