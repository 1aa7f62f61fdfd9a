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
from typing import Any, ClassVar, cast

from mypy_extensions import mypyc_attr

from ferryman.context import RequestContext, Response
from ferryman.http.headers import BODYLESS_STATUS, HeaderList, remove

RequestResult = Response | None | Awaitable[Response | None]
BodyFilter = Callable[[RequestContext, bytes, bool], bytes]


# Subclassed by plain-Python code (plugins, the forward proxy) when this module is compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class Filter:
    """Base class for filters. Subclasses override any of the phase methods."""

    # True when ``on_response`` removes Content-Length whenever ``on_response_body`` is going
    # to change this response's body, and the body phase leaves every other response alone.
    # A response that keeps its Content-Length then skips the body phase (and may go out by
    # sendfile). Left False, every response with a body is streamed through the filter and
    # loses its Content-Length, which is always safe.
    body_length_aware: ClassVar[bool] = False

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
        "body_length_aware",
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
        self.on_response_body: tuple[BodyFilter, ...] = bound("on_response_body")[::-1]
        self.body_length_aware = all(
            f.body_length_aware
            for f in filters
            if type(f).on_response_body is not Filter.on_response_body
        )
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

    def body_filters(self, headers: HeaderList) -> tuple[BodyFilter, ...]:
        """The body filters a response must go through, after ``on_response`` ran on
        ``headers`` (of a response that has a body). Content-Length is gone from ``headers``
        whenever the answer is not empty: the body is then streamed."""
        body = self.on_response_body
        if not body:
            return body
        if not self.body_length_aware:
            remove(headers, (b"content-length",))
            return body
        for k, _ in headers:
            if k == b"content-length":
                return ()
        return body

    @staticmethod
    def run_body(
        filters: tuple[BodyFilter, ...], ctx: RequestContext, data: bytes, end: bool
    ) -> bytes:
        """``data`` through each body filter. A filter handing back a bytearray or a view
        (plain Python lets it pass) is given the benefit of the doubt: it becomes bytes."""
        # Called as returning object: the compiled build would reject a bytearray at the call.
        for method in cast("tuple[Callable[..., object], ...]", filters):
            out = method(ctx, data, end)
            if type(out) is not bytes:  # memoryview() refuses what is not a buffer (an int)
                out = bytes(memoryview(cast("bytes | bytearray | memoryview", out)))
            data = out
        return data

    @staticmethod
    def finish_body(
        filters: tuple[BodyFilter, ...], ctx: RequestContext, data: bytes = b""
    ) -> bytes:
        """The last call of ``filters`` (from :meth:`body_filters`): ``data``, the body's last
        bytes if any, through each with ``end`` set; returns what is left to send."""
        return FilterChain.run_body(filters, ctx, data, True)

    def run_whole_response(
        self, ctx: RequestContext, status: int, headers: HeaderList, body: bytes
    ) -> bytes:
        """Both response phases for a response whose whole body is at hand (an error, a
        redirect, a filter's answer): returns the body to send, its Content-Length set."""
        headers.append((b"content-length", b"%d" % len(body)))
        self.run_response(ctx, status, headers)
        if self.on_response_body and status not in BODYLESS_STATUS and ctx.method != "HEAD":
            body_filters = self.body_filters(headers)
            if body_filters:
                body = self.finish_body(body_filters, ctx, body)
                headers.append((b"content-length", b"%d" % len(body)))
        return body

    def run_log(self, ctx: RequestContext) -> None:
        for method in self.on_log:
            method(ctx)
