"""HTTP/1.1 framing, fed bytes: the parser's calls are the whole story."""

from __future__ import annotations

import pytest

from ferryman.http.h1 import (
    Limits,
    ParseError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    request_head,
    response_head,
)

LIMITS = Limits(max_request_line=1024, max_header_size=2048, max_headers=10)


class Requests:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_request(self, head: RequestHead) -> None:
        self.events.append(
            (
                "head",
                head.method,
                head.target,
                head.host,
                head.content_length,
                head.chunked,
                head.keep_alive,
            )
        )

    def on_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_request_end(self) -> None:
        self.events.append("end")


def parse(*chunks: bytes) -> list[object]:
    sink = Requests()
    parser = RequestParser(sink, LIMITS)
    for c in chunks:
        parser.feed(c)
    return sink.events


def test_pipelined_requests_in_one_chunk() -> None:
    events = parse(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    assert events == [
        ("head", "GET", b"/a", b"x", None, False, True),
        "end",
        ("head", "POST", b"/b", b"x", 3, False, True),
        ("body", b"abc"),
        "end",
    ]


def test_chunked_body_split_anywhere() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    events = parse(*[raw[i : i + 1] for i in range(len(raw))])
    assert events[0] == ("head", "POST", b"/", b"x", None, True, True)
    assert b"".join(e[1] for e in events if isinstance(e, tuple) and e[0] == "body") == b"abc"
    assert events[-1] == "end"


def test_http10_defaults_to_close() -> None:
    assert parse(b"GET / HTTP/1.0\r\n\r\n")[0] == ("head", "GET", b"/", b"", None, False, False)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 3000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 11 + b"\r\n", 431),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: nope\r\n\r\n", 417),
    ],
)
def test_refused_heads(raw: bytes, status: int) -> None:
    with pytest.raises(ParseError) as info:
        parse(raw)
    assert info.value.status == status


def test_head_dribbled_without_end_is_refused_once_it_cannot_fit() -> None:
    sink = Requests()
    parser = RequestParser(sink, LIMITS)
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n")
    with pytest.raises(ParseError) as info:
        for _ in range(400):
            parser.feed(b"X-Long: aaaa")
    assert info.value.status == 431


def test_upgrade_returns_offset_of_tunnelled_bytes() -> None:
    sink = Requests()
    parser = RequestParser(sink, LIMITS)
    raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    offset = parser.feed(raw + b"\x81\x00")
    assert offset == len(raw)


class Responses:
    def __init__(self) -> None:
        self.events: list[object] = []

    def on_response(self, head: ResponseHead) -> None:
        self.events.append(("head", head.status, head.content_length, head.keep_alive))

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.events.append(("body", bytes(data)))

    def on_response_end(self, keep_alive: bool) -> None:
        self.events.append(("end", keep_alive))


def test_head_response_has_no_body_and_the_next_one_parses() -> None:
    sink = Responses()
    parser = ResponseParser(sink)
    parser.expect("HEAD")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert sink.events == [
        ("head", 200, 10, True),
        ("end", True),
        ("head", 200, 2, True),
        ("body", b"hi"),
        ("end", True),
    ]


def test_interim_then_final_and_204_304() -> None:
    sink = Responses()
    parser = ResponseParser(sink)
    parser.expect("GET")
    parser.feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"
    )
    statuses = [e[1] for e in sink.events if e[0] == "head"]
    assert statuses == [100, 204, 304]
    assert not any(e[0] == "body" for e in sink.events)


def test_serializers() -> None:
    assert response_head(404, [(b"a", b"b")]) == b"HTTP/1.1 404 Not Found\r\na: b\r\n\r\n"
    assert (
        request_head("GET", b"/x?y", [(b"host", b"h")]) == b"GET /x?y HTTP/1.1\r\nhost: h\r\n\r\n"
    )


def test_large_reads_with_bodies_are_not_mistaken_for_large_heads() -> None:
    # One read may hold a whole small head and a body far larger than any header limit; the
    # next message's head must not be charged for it either.
    sink = Responses()
    parser = ResponseParser(sink, max_header_size=4096)
    body = b"y" * 300_000
    for _ in range(3):
        parser.expect("GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + body)
    assert [e[0] for e in sink.events].count("end") == 3
    reqs = Requests()
    rp = RequestParser(reqs, LIMITS)
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + body
    rp.feed(post + post[:40])  # a second head starts in the same read
    rp.feed(post[40:])
    assert reqs.events.count("end") == 2


def _body(events: list[object]) -> bytes:
    return b"".join(e[1] for e in events if isinstance(e, tuple) and e[0] == "body")


class Views(Responses):
    """Keeps what the parser hands over as it is (a view of the read, or bytes)."""

    def on_response_body(self, data: bytes | memoryview) -> None:
        self.events.append(("body", data))


def test_a_large_body_of_known_length_passes_through_as_views_of_the_read() -> None:
    sink = Views()
    parser = ResponseParser(sink)
    body = bytes(range(256)) * 256  # 64 KiB
    read = b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + body
    for _ in range(2):  # a fresh llhttp parser takes the second head
        parser.expect("GET")
        parser.feed(read)
        assert parser.done and not parser.stray
    heads = [e for e in sink.events if e[0] == "head"]
    bodies = [e[1] for e in sink.events if e[0] == "body"]
    assert heads == [("head", 200, 65536, True)] * 2
    assert all(isinstance(b, memoryview) and b.obj is read for b in bodies)
    assert b"".join(bodies) == body * 2
    assert [e for e in sink.events if e[0] == "end"] == [("end", True)] * 2


def test_a_passed_body_spans_reads_and_bytes_after_it_are_stray() -> None:
    sink = Responses()
    parser = ResponseParser(sink)
    body = b"z" * 40_000
    read = b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\nConnection: close\r\n\r\n" + body
    parser.expect("GET")
    parser.feed(read[:20_000])
    assert not parser.done
    parser.feed(read[20_000:] + b"HTTP/1.1 200 OK\r\n")
    assert parser.done and parser.stray
    assert _body(sink.events) == body
    assert sink.events[-1] == ("end", False)


def test_a_head_read_alone_leaves_the_rest_of_the_body_to_be_passed_on_unread() -> None:
    # A reader that splices reads a head at a time: the parser counts what went by unread.
    sink = Responses()
    parser = ResponseParser(sink)
    parser.pass_min = 2048
    read = (b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 3000)[:2048]
    for more in (False, True):
        parser.expect("GET")
        parser.feed(read)
        assert parser.body_left == 100_000 - (2048 - read.index(b"a"))
        parser.passed(50_000)
        assert not parser.done and parser.body_left > 0
        parser.passed(parser.body_left, more)  # ``more``: bytes were seen after the body
        assert parser.done and parser.body_left == 0 and parser.stray is more
        assert sink.events[-1] == ("end", not more)
    assert len([e for e in sink.events if e[0] == "head"]) == 2


def test_large_reads_that_cannot_pass_through_parse_as_usual() -> None:
    sink = Responses()
    parser = ResponseParser(sink)
    data = b"q" * 30_000
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        len(data),
        data,
    )
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + chunked)
    assert [e[1] for e in sink.events if e[0] == "head"] == [100, 200]
    assert _body(sink.events) == data and parser.done and not parser.stray
    sink.events.clear()
    parser.expect("GET")  # an interim response, then a body that passes through
    parser.feed(
        b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n" + data
    )
    assert [e[1] for e in sink.events if e[0] == "head"] == [103, 200]
    assert _body(sink.events) == data and parser.done and not parser.stray


def test_a_head_split_across_reads_is_still_bounded() -> None:
    reqs = Requests()
    rp = RequestParser(reqs, LIMITS)
    rp.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" + b"GET / HTTP/1.1\r\n")
    with pytest.raises(ParseError) as info:
        for _ in range(100):
            rp.feed(b"X-A: " + b"a" * 100 + b"\r\n")
    assert info.value.status == 431


def test_a_read_that_continues_a_head_never_starts_a_pass_through() -> None:
    # An interim response, then the final head cut inside its blank line: the next read is
    # long and holds "\r\n\r\n" in its body, but it is not the start of a head.
    sink = Responses()
    parser = ResponseParser(sink)
    body = b"a\r\n\r\nb" * 5000
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 30000\r\n")
    parser.feed(b"\r\n" + body)
    assert [e[1] for e in sink.events if e[0] == "head"] == [103, 200]
    assert _body(sink.events) == body and parser.done and not parser.stray
    assert sink.events[-1] == ("end", True) and parser.body_left == 0


def test_a_crlf_after_a_passed_body_is_not_stray() -> None:
    sink = Responses()
    parser = ResponseParser(sink)
    parser.expect("GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n" + b"c" * 20000 + b"\r\n")
    assert parser.done and not parser.stray and sink.events[-1] == ("end", True)


def test_field_names_are_lowered_through_a_bounded_table() -> None:
    from ferryman.http import h1

    sink = Responses()
    parser = ResponseParser(sink)
    heads: list[ResponseHead] = []
    sink.on_response = heads.append  # type: ignore[method-assign]
    names = [b"X-Name-%d" % i for i in range(h1._LOWER_MAX + 10)]
    parser.expect("GET")
    fields = b"".join(n + b": v\r\n" for n in names[:50])
    parser.feed(b"HTTP/1.1 204 No Content\r\nContent-TYPE: a\r\n" + fields + b"\r\n")
    assert [k for k, _ in heads[0].headers][:3] == [b"content-type", b"x-name-0", b"x-name-1"]
    for name in names:  # a peer inventing names by the thousand
        h1._lower(name)
    assert len(h1._LOWER) == h1._LOWER_MAX
    assert h1._lower(b"New-ONE") == b"new-one"
    h1._LOWER.clear()
    assert h1._lower(b"X" * 65) == b"x" * 65 and not h1._LOWER  # long names are not kept
