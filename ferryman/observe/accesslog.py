"""Access log lines: nginx's ``combined``, JSON lines, or a template of ``$variables``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from ferryman.context import RequestContext
from ferryman.http.headers import get

Field = Callable[[RequestContext], str]


def _header(name: str) -> Field:
    key = name.lower().replace("_", "-").encode("latin-1")

    def field(ctx: RequestContext) -> str:
        v = get(ctx.headers, key)
        return v.decode("latin-1") if v is not None else "-"

    return field


VARIABLES: dict[str, Field] = {
    "remote_addr": lambda c: c.client_addr,
    "remote_user": lambda c: c.user or "-",
    "time_local": lambda c: time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(c.start)),
    "time_iso8601": lambda c: time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(c.start)),
    "request": lambda c: f"{c.method} {c.target.decode('latin-1')} HTTP/{c.version}",
    "method": lambda c: c.method,
    "uri": lambda c: c.path.decode("latin-1"),
    "request_uri": lambda c: c.target.decode("latin-1"),
    "upstream_uri": lambda c: c.upstream_target.decode("latin-1"),
    "status": lambda c: str(c.status),
    "body_bytes_sent": lambda c: str(c.bytes_sent),
    "request_length": lambda c: str(c.bytes_received),
    "request_time": lambda c: f"{c.duration:.3f}",
    "upstream_addr": lambda c: c.upstream_addr or "-",
    "upstream_status": lambda c: str(c.upstream_status) if c.upstream_status else "-",
    "host": lambda c: c.host,
    "route": lambda c: c.route.name if c.route is not None else "-",
    "scheme": lambda c: c.scheme,
    "error": lambda c: c.error or "-",
    "ssl_protocol": lambda c: c.tls.get("protocol", "-") if c.tls else "-",
    "ssl_cipher": lambda c: c.tls.get("cipher", "-") if c.tls else "-",
    "ssl_server_name": lambda c: c.tls.get("server_name") or "-" if c.tls else "-",
    "ssl_session_reused": lambda c: c.tls.get("session_reused", "-") if c.tls else "-",
    "server_protocol": lambda c: f"HTTP/{c.version}",
    "http_referer": _header("referer"),
    "http_user_agent": _header("user-agent"),
}

COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)

_VAR = re.compile(r"\$(\w+)")


def compile_format(fmt: str) -> Callable[[RequestContext], bytes]:
    """A function from a request to its log line (with newline), built once at config load."""
    if fmt == "json":
        return _json_line
    template = COMBINED if fmt == "combined" else fmt
    parts: list[str | Field] = []
    pos = 0
    for m in _VAR.finditer(template):
        parts.append(template[pos : m.start()])
        name = m.group(1)
        if name in VARIABLES:
            parts.append(VARIABLES[name])
        elif name.startswith("http_"):
            parts.append(_header(name[5:]))
        else:
            raise ValueError(f"unknown log variable ${name}")
        pos = m.end()
    parts.append(template[pos:])

    def line(ctx: RequestContext) -> bytes:
        out = "".join(p if isinstance(p, str) else p(ctx) for p in parts)
        return out.encode("utf-8", "replace") + b"\n"

    return line


def _json_line(ctx: RequestContext) -> bytes:
    record = {
        "time": VARIABLES["time_iso8601"](ctx),
        "client": ctx.client_addr,
        "user": ctx.user or None,
        "method": ctx.method,
        "host": ctx.host,
        "uri": ctx.target.decode("latin-1"),
        "status": ctx.status,
        "bytes_sent": ctx.bytes_sent,
        "bytes_received": ctx.bytes_received,
        "duration_ms": round(ctx.duration * 1000, 3),
        "upstream": ctx.upstream_addr or None,
        "upstream_status": ctx.upstream_status or None,
        "referer": _header("referer")(ctx),
        "user_agent": _header("user-agent")(ctx),
    }
    if ctx.error:
        record["error"] = ctx.error
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"
