"""The error log: what went wrong and why, one line per event, to stderr or a file."""

from __future__ import annotations

import logging
import sys

from ferryman.config.schema import Log


def setup_logging(config: Log) -> None:
    handler: logging.Handler
    if config.error_path == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    elif config.error_path == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        handler = logging.FileHandler(config.error_path)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s [%(levelname)s] %(process)d: %(message)s", "%Y/%m/%d %H:%M:%S"
        )
    )
    root = logging.getLogger("ferryman")
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    root.propagate = False
