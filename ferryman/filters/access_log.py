"""The access log, as an ``on_log`` filter."""

from __future__ import annotations

from ferryman.config.schema import AccessLog as AccessLogConfig
from ferryman.context import RequestContext
from ferryman.filters.base import Filter
from ferryman.observe.accesslog import compile_format
from ferryman.observe.logwriter import writer_for


class AccessLog(Filter):
    def __init__(self, config: AccessLogConfig) -> None:
        super().__init__()
        self._line = compile_format(config.format)
        self._writer = writer_for(config.path)

    def on_log(self, ctx: RequestContext) -> None:
        self._writer.write(self._line(ctx))
