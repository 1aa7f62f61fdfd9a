"""Durations (``60s``, ``10m``, ``24h``) and sizes (``4k``, ``10m``, ``1g``) as nginx reads them."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG])?[bB]?\s*$")
_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, None: 1}


def parse_duration(value: object) -> float:
    """Seconds from ``1.5``, ``250ms``, ``60s``, ``10m``, ``24h`` or ``7d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 24h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration such as 30s, 10m or 24h")


def parse_size(value: object) -> int:
    """Bytes from ``512``, ``4k``, ``10m`` or ``1g``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4k, 10m or 1g")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError(f"{value!r} is not a size such as 4k, 10m or 1g")
