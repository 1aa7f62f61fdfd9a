"""Handlers that answer from the config: ``respond`` and ``redirect``."""

from __future__ import annotations

import re

from ferryman.config.schema import RedirectHandler, RespondHandler
from ferryman.context import RequestContext
from ferryman.http.headers import HeaderList
from ferryman.proxy.api import Downstream, Exchange


class Respond:
    def __init__(self, config: RespondHandler) -> None:
        self.status = config.status
        self.body = config.body.encode()
        headers: HeaderList = []
        if self.body or config.content_type:
            headers.append((b"content-type", config.content_type.encode("latin-1")))
        headers += [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in config.headers.items()
        ]
        self.headers = headers

    def start(self, ctx: RequestContext, downstream: Downstream) -> Exchange | None:
        downstream.respond(self.status, list(self.headers), self.body)
        return None


_VAR = re.compile(r"\$(scheme|host|request_uri|uri|args|server_port)")


class Redirect:
    def __init__(self, config: RedirectHandler) -> None:
        self.status = config.status
        self.template = config.to
        self.literal = _VAR.search(config.to) is None

    def target(self, ctx: RequestContext) -> str:
        if self.literal:
            return self.template
        values = {
            "scheme": ctx.scheme,
            "host": _hostname(ctx.host),
            "request_uri": ctx.target.decode("latin-1"),
            "uri": ctx.path.decode("latin-1"),
            "args": ctx.query.decode("latin-1"),
            "server_port": str(ctx.server_port),
        }
        return _VAR.sub(lambda m: values[m.group(1)], self.template)

    def start(self, ctx: RequestContext, downstream: Downstream) -> Exchange | None:
        location = self.target(ctx).encode("latin-1")
        body = b"Redirecting to " + location + b"\n"
        headers: HeaderList = [(b"location", location), (b"content-type", b"text/plain")]
        downstream.respond(self.status, headers, body)
        return None


def _hostname(host: str) -> str:
    """The Host header without its port, as nginx's ``$host``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]
