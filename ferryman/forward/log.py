"""The forward proxy's access log: one line per request and per tunnel.

Fields: time, client address and port, user, protocol, method, destination (``host:port``),
target (the URL of a plain HTTP request), status, bytes
from the client (``up``) and to it (``down``), duration, the address actually connected to,
and the reason for a refusal. ``text`` writes ``key=value`` pairs (a value with spaces,
quotes or control characters is written as a JSON string), ``json`` one JSON object per line.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ferryman.config.forward import ForwardLog
from ferryman.context import RequestContext
from ferryman.filters.base import Filter
from ferryman.observe.logwriter import writer_for


def access_log(config: ForwardLog) -> ForwardAccessLog | None:
    """The forward proxy's access log, or None when it is turned off."""
    return ForwardAccessLog(config) if config.enabled else None


def record(ctx: RequestContext) -> dict[str, Any]:
    splice = ctx.state.get("splice")
    if splice is not None:
        up, down = splice.bytes_up, splice.bytes_down
    else:
        up, down = ctx.bytes_received, ctx.bytes_sent
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ctx.start)),
        "client": f"{ctx.client_addr}:{ctx.client_port}",
        "user": ctx.user or "-",
        "proto": ctx.scheme,
        "method": ctx.method,
        "dest": ctx.host or "-",
        "target": ctx.target.decode("latin-1") or "-",
        "status": ctx.status,
        "up": up,
        "down": down,
        "duration": round(ctx.duration, 3),
        "upstream": ctx.upstream_addr or "-",
        "reason": ctx.error or "-",
    }


def _needs_quotes(s: str) -> bool:
    return not s or any(c in ' "=\\' or not c.isprintable() for c in s)


def text_line(rec: dict[str, Any]) -> str:
    """``key=value`` pairs; a value that is empty or holds a space, quote, equals sign,
    backslash or any control character is written as a JSON string, so every control
    character (CR, LF, ESC...) is escaped and one record stays one line."""
    parts = []
    for k, v in rec.items():
        s = str(v)
        if _needs_quotes(s):
            s = json.dumps(s, ensure_ascii=False)
            # json.dumps leaves U+2028/U+2029 and C1 controls as they are.
            s = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in s)
        parts.append(f"{k}={s}")
    return " ".join(parts)


class ForwardAccessLog(Filter):
    """The log filter; made only when ``enabled`` (see :func:`access_log`)."""

    def __init__(self, config: ForwardLog) -> None:
        super().__init__()
        self.json = config.format == "json"
        self._writer = writer_for(config.path)

    def on_log(self, ctx: RequestContext) -> None:
        rec = record(ctx)
        line = json.dumps(rec, separators=(",", ":")) if self.json else text_line(rec)
        self._writer.write(line.encode("utf-8", "replace") + b"\n")
