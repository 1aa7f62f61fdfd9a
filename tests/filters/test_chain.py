"""The filter chain's contract with plugins: phases split once, body results made bytes."""

from __future__ import annotations

from ferryman.context import RequestContext
from ferryman.filters.base import Filter, FilterChain


def _ctx() -> RequestContext:
    return RequestContext("127.0.0.1", 5000, 8080, "http", "GET", b"/", "1.1", [], "x")


class Loose(Filter):
    """A plugin that hands back a bytearray, then a view: plain Python let these pass."""

    def on_response_body(self, ctx: RequestContext, data: bytes, end: bool) -> bytes:
        out = bytearray(data.upper())
        return memoryview(out) if end else out  # type: ignore[return-value]


class Tail(Filter):
    def on_response_body(self, ctx: RequestContext, data: bytes, end: bool) -> bytes:
        return data + b"!" if end else data


def test_only_overridden_phases_are_in_the_chain() -> None:
    chain = FilterChain([Loose(), Tail()])
    assert len(chain.on_response_body) == 2
    assert chain.on_request == () and chain.on_log == () and not chain.on_request_async


def test_body_results_that_are_not_bytes_become_bytes() -> None:
    chain = FilterChain([Tail(), Loose()])  # Loose runs first: the response phase is reversed
    ctx = _ctx()
    middle = FilterChain.run_body(chain.on_response_body, ctx, b"ab", False)
    last = FilterChain.finish_body(chain.on_response_body, ctx, b"cd")
    assert (type(middle), middle) == (bytes, b"AB")
    assert (type(last), last) == (bytes, b"CD!")
