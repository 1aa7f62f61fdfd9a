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

from typing import Protocol

import httptools

from ferryman.http.headers import HeaderList


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

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


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


class _ParserBase:
    """What request and response parsers share: error mapping and the upgrade offset."""

    __slots__ = ("_parser",)
    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def feed(self, data: bytes) -> int | None:
        """Parse ``data``; the offset where tunnelled bytes start after an upgrade, else None."""
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
        return None


class RequestParser(_ParserBase):
    __slots__ = ("_head_size", "_headers", "_in_head", "_limits", "_sink", "_url")

    def __init__(self, sink: RequestSink, limits: Limits) -> None:
        self._sink = sink
        self._limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: HeaderList = []
        self._head_size = 0
        self._in_head = False

    def feed(self, data: bytes) -> int | None:
        if self._in_head:
            # A head arriving in many small pieces with no end: refuse once it cannot fit.
            self._head_size += len(data)
            if self._head_size > self._limits.max_header_size + self._limits.max_request_line:
                raise ParseError(431, "request header fields too large")
        return super().feed(data)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_request_line:
            raise ParseError(414, "request-URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name.lower(), value))
        if len(headers) > self._limits.max_headers:
            raise ParseError(431, "too many header fields")

    def on_headers_complete(self) -> None:
        self._in_head = False
        p = self._parser
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            raise ParseError(505, "HTTP version not supported")
        headers = self._headers
        size = len(self._url)
        host = b""
        hosts = 0
        content_length: int | None = None
        chunked = False
        expect = False
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                host = value
                hosts += 1
            elif name == b"content-length":
                content_length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    raise ParseError(417, "unsupported expectation")
                expect = True
        if size > self._limits.max_header_size:
            raise ParseError(431, "request header fields too large")
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise ParseError(400, "a request needs exactly one Host header")
        if chunked and version == "1.0":
            raise ParseError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        head = RequestHead(
            p.get_method().decode("ascii"),
            self._url,
            version,
            headers,
            p.should_keep_alive(),
            p.should_upgrade(),
            host,
            content_length,
            chunked,
            expect,
        )
        self._sink.on_request(head)

    def on_body(self, body: bytes) -> None:
        self._sink.on_body(body)

    def on_message_complete(self) -> None:
        self._sink.on_request_end()


class ResponseHead:
    __slots__ = ("content_length", "headers", "keep_alive", "reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: str,
        headers: HeaderList,
        keep_alive: bool,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length


class ResponseSink(Protocol):
    def on_response(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self, keep_alive: bool) -> None: ...


class ResponseParser(_ParserBase):
    """Parses one upstream connection's responses; call :meth:`expect` before each request."""

    __slots__ = ("_bodyless", "_headers", "_reason", "_size", "max_header_size", "sink")

    def __init__(self, sink: ResponseSink, max_header_size: int = 65536) -> None:
        self.sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: HeaderList = []
        self._size = 0
        self._bodyless = False
        self.max_header_size = max_header_size

    def expect(self, method: str) -> None:
        """Tell the parser what the next response answers: HEAD responses carry no body."""
        self._bodyless = method == "HEAD"

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = []
        self._size = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > self.max_header_size:
            raise ParseError(502, "upstream response header too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = p.get_status_code()
        content_length: int | None = None
        for name, value in self._headers:
            if name == b"content-length":
                content_length = int(value)
                break
        head = ResponseHead(
            status,
            self._reason,
            p.get_http_version(),
            self._headers,
            p.should_keep_alive(),
            content_length,
        )
        self.sink.on_response(head)
        if self._bodyless and status >= 200:
            # llhttp cannot be told a response answers HEAD: end it here and start a fresh
            # parser for the next response on this connection.
            keep_alive = p.should_keep_alive()
            self._parser = httptools.HttpResponseParser(self)
            self.sink.on_response_end(keep_alive)

    def on_body(self, body: bytes) -> None:
        self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._bodyless and self._parser.get_status_code() >= 200:
            return
        self.sink.on_response_end(self._parser.should_keep_alive())


_REASONS: dict[int, bytes] = {}


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


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
        _STATUS_LINES[status] = line
    return line


def serialize_headers(headers: HeaderList) -> bytes:
    return b"".join([k + b": " + v + b"\r\n" for k, v in headers])


def response_head(status: int, headers: HeaderList) -> bytes:
    return status_line(status) + serialize_headers(headers) + b"\r\n"


def request_head(method: str, target: bytes, headers: HeaderList) -> bytes:
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (
        method.encode("ascii"),
        target,
        serialize_headers(headers),
    )


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
