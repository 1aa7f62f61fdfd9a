"""HTTP/1.1 framing on llhttp (via httptools), with the limits and smuggling rules of a proxy.

llhttp in its default strict mode already refuses the ambiguous shapes request smuggling
relies on: Content-Length together with Transfer-Encoding, duplicate Content-Length, a
Transfer-Encoding whose last coding is not ``chunked``, obs-fold, bare LF line ends, bad
characters in names and values. This module adds what llhttp leaves to the caller: sizes
(414, 431), the version (505), ``Host`` rules, and Transfer-Encoding in HTTP/1.0.

Parsers call a *sink*; they never touch a socket. An exception a parser raises is a
:class:`ParseError` whose ``status`` is the answer to send before closing the connection.
"""

from __future__ import annotations

from typing import Final, Protocol

import httptools

from ferryman.http.headers import BODYLESS_STATUS, UNKNOWN, HeaderList


class ParseError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHead:
    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "has_body",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: HeaderList,
        keep_alive: bool,
        upgrade: bool,
        host: bytes,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.has_body = chunked or bool(content_length)


class RequestSink(Protocol):
    def on_request(self, head: RequestHead) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class Limits:
    __slots__ = ("max_header_size", "max_headers", "max_request_line")

    def __init__(self, max_request_line: int, max_header_size: int, max_headers: int) -> None:
        self.max_request_line = max_request_line
        self.max_header_size = max_header_size
        self.max_headers = max_headers


_METHODS: Final = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}


class _ParserBase:
    """What request and response parsers share: error mapping, the upgrade offset, and a
    cheap bound on the size of the head being parsed (the bytes fed since it began)."""

    __slots__ = ("_head_limit", "_head_size", "_in_head", "_parser")
    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser
    _head_limit: int
    _too_large: int

    def feed(self, data: bytes) -> int | None:
        """Parse ``data``; the offset where tunnelled bytes start after an upgrade, else None."""
        chunk = len(data)
        if self._in_head:
            self._head_size += chunk
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            return int(e.args[0])
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except httptools.HttpParserInvalidMethodError:
            raise ParseError(400, "invalid method") from None
        except httptools.HttpParserError as e:
            raise ParseError(400, str(e) or "malformed request") from None
        # A head arriving in many small pieces with no end: refuse once it cannot fit. Checked
        # after parsing, since one read may hold a whole head and a large body after it.
        if self._in_head and self._head_size > self._head_limit:
            raise ParseError(self._too_large, "header fields too large")
        return None

    def _next_head(self) -> None:
        """A message ended: whatever follows in this chunk, and after, is the next head.

        The chunk that ended the message is not counted against the next head: it may be a
        256 KiB read of body, which would fail the next response for "header too large";
        what of it belongs to the next head is bounded by the read size and checked exactly
        in ``on_headers_complete``."""
        self._head_size = 0
        self._in_head = True


# Field names as sent, lowered once: the same few names come on every message, and a lookup
# costs less than lowering (a method call and a new bytes object each time). Bounded in count
# and in length (a name is parsed before the head's size is checked), so that a peer
# inventing names cannot grow it.
_LOWER: Final[dict[bytes, bytes]] = {}
_LOWER_MAX: Final = 1024
_LOWER_LONGEST: Final = 64


def _lower(name: bytes) -> bytes:
    lowered = name.lower()
    if len(_LOWER) < _LOWER_MAX and len(name) <= _LOWER_LONGEST:
        _LOWER[name] = lowered
    return lowered


def _head_size(start_line: int, headers: HeaderList) -> int:
    return start_line + sum(len(k) + len(v) + 4 for k, v in headers)


class RequestParser(_ParserBase):
    __slots__ = ("_headers", "_limits", "_sink", "_url")
    _parser: httptools.HttpRequestParser
    _too_large = 431

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self._sink = sink
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: HeaderList = []
        self._head_size = 0
        self._in_head = True
        self._head_limit = limits.max_header_size + limits.max_request_line

    # httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            raise ParseError(414, "request-URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((_LOWER.get(name) or _lower(name), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        headers = self._headers
        limits = self._limits
        self._in_head = False
        if self._head_size > limits.max_header_size and (
            _head_size(len(self._url), headers) > limits.max_header_size
        ):
            raise ParseError(431, "request header fields too large")
        if len(headers) > limits.max_headers:
            raise ParseError(431, "too many header fields")
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            if version < "1.0":
                raise ParseError(400, "HTTP/0.9 requests are not served")
            raise ParseError(505, "HTTP version not supported")
        # One dict built in C answers every lookup below; duplicates need a closer look.
        fields = dict(headers)
        host = fields.get(b"host")
        duplicates = len(fields) != len(headers)
        if duplicates and host is not None and sum(1 for k, _ in headers if k == b"host") > 1:
            raise ParseError(400, "a request needs exactly one Host header")
        if host is None:
            if version == "1.1":
                raise ParseError(400, "a request needs exactly one Host header")
            host = b""
        cl = fields.get(b"content-length")
        te = fields.get(b"transfer-encoding")
        chunked = te is not None
        if te is not None:
            if version == "1.0":
                raise ParseError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
            if te.lower() != b"chunked":
                # Only chunked is taken apart here; another coding would reach the upstream
                # mislabelled (nginx answers 501 too).
                raise ParseError(501, "only the chunked transfer coding is supported")
        expect = fields.get(b"expect")
        if expect is not None and expect.lower() != b"100-continue":
            raise ParseError(417, "unsupported expectation")
        method = p.get_method()
        url = self._url
        self._url = b""
        self._headers = []
        head = RequestHead(
            _METHODS.get(method) or method.decode("ascii"),
            url,
            version,
            headers,
            p.should_keep_alive(),
            p.should_upgrade(),
            host,
            int(cl) if cl is not None else None,
            chunked,
            expect is not None,
        )
        self._sink.on_request(head)

    def on_body(self, body: bytes) -> None:
        self._sink.on_body(body)

    def on_message_complete(self) -> None:
        self._next_head()
        self._sink.on_request_end()


class ResponseHead:
    __slots__ = ("chunked", "connection", "content_length", "headers", "keep_alive", "status")

    def __init__(
        self,
        status: int,
        headers: HeaderList,
        keep_alive: bool,
        content_length: int | None,
        chunked: bool = False,
        connection: bytes | None = UNKNOWN,
    ) -> None:
        self.connection = connection  # the Connection value; UNKNOWN if not looked at
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked


class ResponseSink(Protocol):
    def on_response(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes | memoryview) -> None: ...
    def on_response_end(self, keep_alive: bool) -> None: ...


# A read at least this long that starts with a whole head: parse the head alone, and pass a
# Content-Length body on as views of the read, uncopied (see ResponseParser.feed).
PASS_THROUGH_MIN: Final = 16384


class ResponseParser(_ParserBase):
    """Parses one upstream connection's responses; call :meth:`expect` before each request.

    Bodies of known length that come in large reads skip llhttp: :meth:`feed` parses the
    head alone and hands the body on as views of the bytes read (no copy), counting it down
    to the end of the response; a fresh llhttp parser then takes the next head. Body bytes
    the caller moves on without reading them (spliced) are counted with :meth:`passed`.
    """

    __slots__ = (
        "_alone",
        "_headers",
        "_keep",
        "_status",
        "begun",
        "body_left",
        "bodyless",
        "done",
        "pass_min",
        "sink",
        "stray",
    )
    _parser: httptools.HttpResponseParser
    _too_large = 502

    def __init__(self, sink: ResponseSink, max_header_size: int = 65536) -> None:
        self.sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._headers: HeaderList = []
        self.bodyless = False
        self._head_size = 0
        self._in_head = True
        self._head_limit = max_header_size
        # ``done`` once the final response to the current request has ended; anything parsed
        # after that is ``stray``, and the connection must not be used again.
        self.done = False
        self.stray = False
        self.body_left = 0  # bytes of a passed-through body still to come
        self._alone = False  # the head being parsed was fed alone: its body may pass through
        self._keep = False  # should_keep_alive of the response passing through
        self._status = 0  # of the response being parsed
        self.begun = False  # llhttp is inside a message: a read cannot start a head
        # A read this long that starts with a whole head passes its body through. A reader
        # that reads a head at a time to splice the body sets it to its read size.
        self.pass_min = PASS_THROUGH_MIN

    def feed(self, data: bytes) -> int | None:
        if self.body_left:
            self._pass(data, 0)
            return None
        if len(data) >= self.pass_min and not self.begun:
            cut = data.find(b"\r\n\r\n") + 4
            if cut > 4:
                self._alone = True
                try:
                    offset = _ParserBase.feed(self, data[:cut])
                finally:
                    self._alone = False
                if offset is not None:
                    return offset
                if self.body_left:
                    self._pass(data, cut)
                    return None
                if cut == len(data):
                    return None
                # An interim response, or a body that cannot pass: the rest as usual.
                offset = self.feed(data[cut:])
                return None if offset is None else cut + offset
        return _ParserBase.feed(self, data)

    def _pass(self, data: bytes, start: int) -> None:
        left = self.body_left
        size = len(data) - start
        if size <= left and not start:
            self.sink.on_response_body(data)
        else:
            self.sink.on_response_body(memoryview(data)[start : start + left])
        if size < left:
            self.body_left = left - size
            return
        keep = self._keep
        if size > left and data[start + left :].strip(b"\r\n"):
            # Bytes after the response (a stray CRLF aside, which llhttp would skip): the
            # upstream is out of step, and this connection must not serve another request.
            self.stray = True
            keep = False
        self._end_passed(keep)

    def passed(self, size: int, more: bool = False) -> None:
        """``size`` bytes of the body passing through went on without being read; ``more``
        when bytes were seen after the body's end (the upstream is out of step)."""
        left = self.body_left - size
        if left > 0:
            self.body_left = left
            return
        self.stray = self.stray or more
        self._end_passed(self._keep and not more)

    def _end_passed(self, keep: bool) -> None:
        self.body_left = 0
        self._ended_outside_llhttp()  # llhttp still waits for the body it never saw
        self.sink.on_response_end(keep)

    def expect(self, method: str) -> None:
        """Tell the parser what the next response answers: HEAD responses carry no body."""
        self.bodyless = method == "HEAD"
        self.done = self.stray = False

    def _next_head(self) -> None:
        _ParserBase._next_head(self)
        self.begun = False

    def _ended_outside_llhttp(self) -> None:
        """The final response ended where llhttp cannot see it (a HEAD answer, a body passed
        through): a fresh parser takes the next head."""
        self._parser = httptools.HttpResponseParser(self)
        self._next_head()
        self.done = True

    def on_message_begin(self) -> None:
        self.begun = True
        if self.done:
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((_LOWER.get(name) or _lower(name), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = self._status = p.get_status_code()
        headers = self._headers
        self._headers = []
        self._in_head = False
        if self._head_size > self._head_limit and (_head_size(16, headers) > self._head_limit):
            raise ParseError(502, "upstream response header too large")
        fields = dict(headers)
        cl = fields.get(b"content-length")
        head = ResponseHead(
            status,
            headers,
            p.should_keep_alive(),
            int(cl) if cl is not None else None,
            b"transfer-encoding" in fields,
            fields.get(b"connection") if len(fields) == len(headers) else UNKNOWN,
        )
        self.sink.on_response(head)
        if (
            self._alone
            and head.content_length
            and status >= 200
            and not self.bodyless
            and not head.chunked
            and status not in BODYLESS_STATUS
        ):
            self.body_left = head.content_length
            self._keep = head.keep_alive
            return
        if self.bodyless and status >= 200:
            # llhttp cannot be told a response answers HEAD: end it here and start a fresh
            # parser for the next response on this connection.
            self._ended_outside_llhttp()
            self.sink.on_response_end(head.keep_alive)

    def on_body(self, body: bytes) -> None:
        if self.done:
            self.stray = True  # a "body" after a HEAD response's head: out of step
            return
        self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        self._next_head()
        if self._status >= 200:
            if self.bodyless:
                return
            self.done = True
        self.sink.on_response_end(self._parser.should_keep_alive())


_REASONS: Final[dict[int, bytes]] = {}


def reason_phrase(status: int) -> bytes:
    from http import HTTPStatus

    phrase = _REASONS.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            phrase = b"Unknown"
        _REASONS[status] = phrase
    return phrase


_STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
        _STATUS_LINES[status] = line
    return line


# Joining joins, mapped in C with no Python frame per field, is the quickest way CPython has
# to lay out a header block.
_FIELD: Final = b": ".join


def response_head(status: int, headers: HeaderList) -> bytes:
    line = _STATUS_LINES.get(status) or status_line(status)
    if not headers:
        return line + b"\r\n"
    return b"".join((line, b"\r\n".join(map(_FIELD, headers)), b"\r\n\r\n"))


# "GET " and the like, made once: a format string would be parsed on every request.
_REQUEST_LINE_START: Final[dict[str, bytes]] = {}


def request_head(method: str, target: bytes, headers: HeaderList) -> bytes:
    start = _REQUEST_LINE_START.get(method)
    if start is None:
        start = _REQUEST_LINE_START[method] = method.encode("ascii") + b" "
    if not headers:
        return b"".join((start, target, b" HTTP/1.1\r\n\r\n"))
    block = b"\r\n".join(map(_FIELD, headers))
    return b"".join((start, target, b" HTTP/1.1\r\n", block, b"\r\n\r\n"))


def chunk(data: bytes | memoryview) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
