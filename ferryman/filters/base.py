"""The filter API: the one interface built-in features and user plugins are written against.

A filter is a plain class; each phase is a method it may define. Only the phases a filter
overrides are put in a route's chain, computed once at config load, so an unused phase costs
nothing per request. ``on_request`` may be a coroutine (an auth service, a Redis counter); the
chain awaits it only then.

Phases, in order (``docs/filters.md`` has the chart):

=====================  ================================================================
``on_request``         headers in; return a :class:`Response` to answer, None to go on
``on_upstream_request`` edit the headers about to be sent upstream (``ctx.upstream_target``
                       may be changed too)
``on_response``        edit the response status line's headers before they go out
``on_response_body``   transform a body chunk (``end`` marks the last call); return bytes
``on_log``             the request is over: log it, count it
=====================  ================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ferryman.context import RequestContext, Response
from ferryman.http.headers import HeaderList

RequestResult = Response | None | Awaitable[Response | None]


class Filter:
    """Base class for filters. Subclasses override any of the phase methods."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Mapping[str, Any] = options or {}

    def on_request(self, ctx: RequestContext) -> RequestResult:
        return None

    def on_upstream_request(self, ctx: RequestContext, headers: HeaderList) -> None:
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: HeaderList) -> None:
        return None

    def on_response_body(self, ctx: RequestContext, data: bytes, end: bool) -> bytes:
        return data

    def on_log(self, ctx: RequestContext) -> None:
        return None


PHASES = ("on_request", "on_upstream_request", "on_response", "on_response_body", "on_log")


class FilterChain:
    """The filters of one route, split per phase; empty phases are empty tuples."""

    __slots__ = (
        "filters",
        "on_log",
        "on_request",
        "on_request_async",
        "on_response",
        "on_response_body",
        "on_upstream_request",
    )

    def __init__(self, filters: list[Filter]) -> None:
        self.filters = tuple(filters)

        def bound(name: str) -> tuple[Callable[..., Any], ...]:
            base = getattr(Filter, name)
            return tuple(
                getattr(f, name) for f in filters if getattr(type(f), name, base) is not base
            )

        self.on_request = bound("on_request")
        self.on_request_async = any(inspect.iscoroutinefunction(m) for m in self.on_request)
        self.on_upstream_request = bound("on_upstream_request")
        self.on_response = bound("on_response")
        # Response phases run in reverse, so the filter nearest the handler sees it first.
        self.on_response = self.on_response[::-1]
        self.on_response_body = bound("on_response_body")[::-1]
        self.on_log = bound("on_log")

    def run_request_sync(self, ctx: RequestContext) -> Response | None:
        for method in self.on_request:
            result = method(ctx)
            if result is not None:
                return result  # type: ignore[no-any-return]
        return None

    async def run_request_async(self, ctx: RequestContext) -> Response | None:
        for method in self.on_request:
            result = method(ctx)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result  # type: ignore[no-any-return]
        return None

    def run_response(self, ctx: RequestContext, status: int, headers: HeaderList) -> None:
        for method in self.on_response:
            method(ctx, status, headers)

    def run_log(self, ctx: RequestContext) -> None:
        for method in self.on_log:
            method(ctx)
