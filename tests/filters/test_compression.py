"""Compression: negotiation, the cases left alone, and chunk-by-chunk streaming."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from ferryman.config.schema import Compression as CompressionConfig
from ferryman.context import RequestContext
from ferryman.filters.base import Filter, FilterChain
from ferryman.filters.compression import Compression, choose_encoding, parse_accept_encoding
from ferryman.http.headers import HeaderList, get, get_all

OFFERED = ("br", "zstd", "gzip")


def ctx(accept: str | None = "gzip, br", method: str = "GET") -> RequestContext:
    headers: HeaderList = [(b"host", b"example.com")]
    if accept is not None:
        headers.append((b"accept-encoding", accept.encode()))
    return RequestContext("127.0.0.1", 5000, 443, "https", method, b"/", "1.1", headers, "x")


def response(ctype: bytes = b"application/json", length: int | None = 5000) -> HeaderList:
    headers: HeaderList = [(b"content-type", ctype), (b"etag", b'"abc"')]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return headers


def make(**options: object) -> Compression:
    return Compression(CompressionConfig.model_validate(options))


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("gzip", "gzip"),
        ("gzip, br", "br"),  # equal q: the server's order
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0, gzip;q=0.1", "gzip"),
        ("*", "br"),
        ("*;q=0.5, gzip;q=0.9", "gzip"),
        ("br;q=0, *", "zstd"),
        ("identity", None),
        ("", None),
        ("gzip;q=0", None),
        ("x-gzip", "gzip"),
        ("GZIP;Q=0.8", "gzip"),
        ("deflate, gzip;q=bogus", None),
        ("zstd;q=0.9, gzip;q=0.8", "zstd"),
    ],
)
def test_negotiation(accept: str, chosen: str | None) -> None:
    assert choose_encoding(accept.encode(), OFFERED) == chosen


def test_accept_encoding_qvalues_are_clamped() -> None:
    assert parse_accept_encoding(b"gzip;q=7, br;q=-1") == {"gzip": 1.0, "br": 0.0}


def test_compresses_and_fixes_headers() -> None:
    f = make()
    c, headers = ctx("gzip"), response()
    headers.append((b"accept-ranges", b"bytes"))
    f.on_response(c, 200, headers)
    assert get(headers, b"content-encoding") == b"gzip"
    assert get(headers, b"content-length") is None
    assert get(headers, b"accept-ranges") is None
    assert get(headers, b"etag") == b'W/"abc"'
    assert get_all(headers, b"vary") == [b"Accept-Encoding"]
    body = b'{"k": "' + b"v" * 5000 + b'"}'
    out = f.on_response_body(c, body, False) + f.on_response_body(c, b"", True)
    assert gzip.decompress(out) == body


@pytest.mark.parametrize(
    ("status", "method", "extra", "ctype", "length"),
    [
        (204, "GET", [], b"application/json", 5000),
        (304, "GET", [], b"application/json", 5000),
        (206, "GET", [(b"content-range", b"bytes 0-9/100")], b"application/json", 10),
        (200, "GET", [(b"content-encoding", b"br")], b"application/json", 5000),
        (200, "GET", [(b"cache-control", b"public, no-transform")], b"application/json", 5000),
        (200, "GET", [], b"image/png", 5000),
        (200, "GET", [], b"application/json", 999),
    ],
)
def test_left_alone(status: int, method: str, extra: HeaderList, ctype: bytes, length: int) -> None:
    f = make()
    c = ctx("gzip", method)
    headers = response(ctype, length) + extra
    before = list(headers)
    f.on_response(c, status, headers)
    assert headers[: len(before)] == before
    assert get(headers, b"content-encoding") in (None, b"br")
    assert f.on_response_body(c, b"data", False) == b"data"


def test_head_gets_the_headers_of_its_get() -> None:
    f = make()
    get_headers, head_headers = response(), response()
    get_headers.append((b"accept-ranges", b"bytes"))
    head_headers.append((b"accept-ranges", b"bytes"))
    f.on_response(ctx("gzip"), 200, get_headers)
    c = ctx("gzip", "HEAD")
    f.on_response(c, 200, head_headers)
    assert head_headers == get_headers
    assert get(head_headers, b"content-encoding") == b"gzip"
    assert get(head_headers, b"etag") == b'W/"abc"'
    assert get(head_headers, b"content-length") is None
    assert f.on_response_body(c, b"", True) == b""  # nothing to compress for a HEAD


@pytest.mark.parametrize(
    ("status", "extra", "vary"),
    [
        (206, [(b"content-range", b"bytes 0-9/5000")], True),
        (206, [(b"content-range", b"bytes 0-9/500")], False),  # whole file under min_length
        (304, [], True),
    ],
)
def test_partial_and_not_modified_say_vary(status: int, extra: HeaderList, vary: bool) -> None:
    f = make()
    c = ctx("gzip")
    headers = extra + response(length=10 if status == 206 else None)
    f.on_response(c, status, headers)
    assert get(headers, b"vary") == (b"Accept-Encoding" if vary else None)
    assert get(headers, b"content-encoding") is None
    assert f.on_response_body(c, b"data", False) == b"data"
    bare: HeaderList = [(b"etag", b'"abc"')]  # a 304 with no type: it may vary
    f.on_response(ctx("gzip"), 304, bare)
    assert get(bare, b"vary") == b"Accept-Encoding"
    images = response(b"image/png")
    f.on_response(ctx("gzip"), 304, images)
    assert get(images, b"vary") is None


def test_no_accept_encoding_still_says_vary() -> None:
    f = make()
    headers = response()
    f.on_response(ctx(None), 200, headers)
    assert get(headers, b"content-encoding") is None
    assert get(headers, b"vary") == b"Accept-Encoding"
    assert get(headers, b"content-length") == b"5000"


def test_vary_merges_with_existing() -> None:
    f = make()
    headers = [*response(), (b"vary", b"Origin, accept-encoding")]
    f.on_response(ctx("gzip"), 200, headers)
    assert get_all(headers, b"vary") == [b"Origin, accept-encoding"]
    headers = [*response(), (b"vary", b"Origin")]
    f.on_response(ctx("gzip"), 200, headers)
    assert get_all(headers, b"vary") == [b"Origin", b"Accept-Encoding"]


def test_unknown_length_compresses_and_types_match_by_family() -> None:
    f = make(types=["text/*"], min_length=1000)
    headers = response(b"text/x-anything; charset=utf-8", None)
    f.on_response(ctx("gzip"), 200, headers)
    assert get(headers, b"content-encoding") == b"gzip"
    headers = response(b"application/json", None)
    f.on_response(ctx("gzip"), 200, headers)
    assert get(headers, b"content-encoding") is None


def test_streaming_flushes_every_chunk() -> None:
    """Each chunk's bytes come out at once: a client can decode what it got so far."""
    for coding, decoder in (
        ("gzip", lambda: zlib.decompressobj(31)),
        ("br", brotli.Decompressor),
        ("zstd", lambda: zstandard.ZstdDecompressor().decompressobj()),
    ):
        f = make(algorithms=[coding])
        c = ctx(coding)
        headers = response(length=None)
        f.on_response(c, 200, headers)
        assert get(headers, b"content-encoding") == coding.encode()
        d = decoder()
        got = b""
        for i in range(5):
            piece = b"line %d of a streamed response\n" % i
            out = f.on_response_body(c, piece, False)
            assert out, coding
            got += d.decompress(out) if coding != "br" else d.process(out)
            assert got.endswith(piece), coding
        tail = f.on_response_body(c, b"", True)
        got += d.decompress(tail) if coding != "br" else d.process(tail)
        assert got.count(b"line") == 5


def test_levels_and_algorithms_from_config() -> None:
    f = make(algorithms=["gzip"], level={"gzip": 9})
    assert f.offered == ("gzip",)
    assert f.levels["gzip"] == 9
    with pytest.raises(ValueError, match=r"level\.br"):
        make(level={"br": 12})


def test_chain_keeps_length_when_not_compressing() -> None:
    """A length-aware filter that leaves a response alone costs it neither its
    Content-Length nor a pass through the body phase."""
    chain = FilterChain([make()])
    assert chain.body_length_aware
    headers = response(b"image/png")
    chain.run_response(ctx("gzip"), 200, headers)
    assert chain.body_filters(headers) == ()
    assert get(headers, b"content-length") == b"5000"
    headers = response()
    c = ctx("gzip")
    chain.run_response(c, 200, headers)
    assert chain.body_filters(headers) == chain.on_response_body


def test_whole_response_is_compressed_with_its_new_length() -> None:
    chain = FilterChain([make()])
    headers: HeaderList = [(b"content-type", b"text/plain")]
    body = chain.run_whole_response(ctx("gzip"), 200, headers, b"hello " * 400)
    assert gzip.decompress(body) == b"hello " * 400
    assert get_all(headers, b"content-length") == [b"%d" % len(body)]
    small: HeaderList = [(b"content-type", b"text/plain")]
    assert chain.run_whole_response(ctx("gzip"), 404, small, b"nope") == b"nope"
    assert get(small, b"content-encoding") is None


def test_a_filter_that_is_not_length_aware_streams_every_body() -> None:
    class Upper(Filter):
        def on_response_body(self, ctx: RequestContext, data: bytes, end: bool) -> bytes:
            return data.upper()

    chain = FilterChain([make(), Upper()])
    assert not chain.body_length_aware
    headers = response(b"image/png")
    chain.run_response(ctx("gzip"), 200, headers)
    assert len(chain.body_filters(headers)) == 2
    assert get(headers, b"content-length") is None


def test_identity_encoding_is_replaced() -> None:
    f = make()
    headers = [*response(), (b"content-encoding", b"identity")]
    f.on_response(ctx("gzip"), 200, headers)
    assert get_all(headers, b"content-encoding") == [b"gzip"]
