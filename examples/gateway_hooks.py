"""The gateway's hooks as a Ferryman plugin: a plain class whose methods are phases."""

from __future__ import annotations

import sys
import time

from ferryman.context import RequestContext
from ferryman.filters import Filter
from ferryman.http.headers import HeaderList


class GatewayHooks(Filter):
    """Stamps requests on their way up and logs where each one went and how it ended."""

    def on_upstream_request(self, ctx: RequestContext, headers: HeaderList) -> None:
        headers.append((b"x-request-timestamp", b"%d" % int(time.time() * 1000)))
        target = f"http://{ctx.upstream_addr}{ctx.upstream_target.decode('latin-1')}"
        print(f"{ctx.method} {ctx.target.decode('latin-1')} -> {target}", file=sys.stderr)

    def on_log(self, ctx: RequestContext) -> None:
        print(f"{ctx.target.decode('latin-1')} - {ctx.status}", file=sys.stderr)
