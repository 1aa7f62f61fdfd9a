"""The ``static`` handler: files from a directory, nginx-style.

Theory of operation. The URL path is percent-decoded once and split into segments; a ``..``
segment or a NUL byte is refused (400) before the file system is asked anything, so encoded
tricks such as ``%2e%2e%2f`` cannot climb out of the directory. The joined path is then
resolved with ``realpath`` and must still lie inside the directory, which refuses symlinks
that point outside it unless the route allows them. The file is opened once and every fact
the answer needs (size, modification time, ETag) comes from that open descriptor.

Conditional requests and ranges are answered by the pure rules of :mod:`ferryman.http.
conditional`. The response goes through the route's response filters like any other; when
no filter needs to see the body, large files leave by sendfile(2) on plain connections, else
in bounded reads that wait while the client's socket is full, so a big download costs a
chunk of memory, never the file.
"""

from __future__ import annotations

import asyncio
import html
import logging
import mimetypes
import os
import secrets
import stat
import time
from urllib.parse import quote, unquote_to_bytes

from ferryman.config.schema import StaticHandler
from ferryman.context import RequestContext
from ferryman.filters.base import BodyFilter, FilterChain
from ferryman.http.conditional import (
    content_range,
    http_date,
    if_range_allows,
    parse_range,
    precondition,
)
from ferryman.http.headers import HeaderList, get
from ferryman.proxy.api import Downstream, Exchange
from ferryman.server.tasks import spawn

log = logging.getLogger("ferryman.static")

# Files up to this size are read and answered at once; larger ones stream.
SMALL_FILE = 64 * 1024
# One read of a streamed file: small enough not to hold the loop, large enough to be cheap.
CHUNK = 128 * 1024
# The path is already resolved: O_NOFOLLOW refuses one swapped for a symlink since, and
# O_NONBLOCK keeps a FIFO planted in the directory from blocking the open.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
_TEXT_TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")


def url_segments(path: bytes, dotfiles: bool = False) -> list[str] | int:
    """The path segments a URL path names, or the status refusing it: 400 for ``..``, NUL
    or bytes that are not UTF-8 (encoded or not), 404 for hidden names unless allowed."""
    decoded = unquote_to_bytes(path)
    if b"\0" in decoded:
        return 400
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return 400
    parts: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            return 400
        if segment.startswith(".") and not dotfiles:
            return 404
        parts.append(segment)
    return parts


def inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


class StaticFiles:
    """The handler object of a ``static`` route, built once at config load."""

    def __init__(self, config: StaticHandler, route_path: str, chain: FilterChain) -> None:
        directory = config.root if config.root is not None else config.alias
        assert directory is not None
        self.config = config
        self.root = os.path.realpath(directory)
        # ``alias`` serves the part of the URL after the route's prefix.
        self.strip = route_path.encode() if config.alias is not None else b""
        self.chain = chain
        self.index = list(config.index)
        cache_control = []
        if config.expires is not None:
            cache_control.append(f"max-age={int(config.expires)}")
        if config.cache_control:
            cache_control.append(config.cache_control)
        self.cache_control = ", ".join(cache_control).encode("latin-1") or None
        self.types = {
            k.lower() if k.startswith(".") else "." + k.lower(): v for k, v in config.types.items()
        }
        self._type_cache: dict[str, bytes] = {}
        if not mimetypes.inited:
            mimetypes.init()  # reads the system's tables now rather than on a first request

    # resolving

    def content_type(self, path: str) -> bytes:
        ext = os.path.splitext(path)[1].lower()
        ctype = self._type_cache.get(ext)
        if ctype is None:
            name = self.types.get(ext) or mimetypes.guess_type("f" + ext)[0]
            name = name or self.config.default_type
            charset = self.config.charset
            if charset and name.startswith(_TEXT_TYPES) and "charset" not in name:
                name += f"; charset={charset}"
            ctype = name.encode("latin-1")
            if len(self._type_cache) < 1024:
                self._type_cache[ext] = ctype
        return ctype

    def locate(self, url_path: bytes) -> str | int:
        """The real path of the file or directory ``url_path`` names, or a refusal status."""
        rel = url_path
        if self.strip:
            rel = rel[len(self.strip) :] if rel.startswith(self.strip) else b""
        parts = url_segments(rel, self.config.dotfiles)
        if isinstance(parts, int):
            return parts
        real = os.path.realpath(os.path.join(self.root, *parts))
        if not self.config.follow_outside_symlinks and not inside(self.root, real):
            return 403
        return real

    # answering

    def start(self, ctx: RequestContext, downstream: Downstream) -> Exchange | None:
        if ctx.method not in ("GET", "HEAD"):
            downstream.respond(405, [(b"allow", b"GET, HEAD")], b"")
            return None
        found = self.locate(ctx.path)
        if isinstance(found, int):
            downstream.error(found, _REFUSALS[found])
            return None
        try:
            fd = os.open(found, _OPEN_FLAGS)
        except OSError as e:
            status = 403 if isinstance(e, PermissionError) else 404
            downstream.error(status, _REFUSALS[status])
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                self._directory(ctx, downstream, found)
                return None
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                downstream.error(404, _REFUSALS[404])
                return None
            return self._file(ctx, downstream, fd, found, st)
        except BaseException:
            os.close(fd)
            raise

    def _directory(self, ctx: RequestContext, downstream: Downstream, path: str) -> None:
        if not ctx.path.endswith(b"/"):
            location = ctx.path + b"/" + (b"?" + ctx.query if ctx.query else b"")
            downstream.respond(
                301,
                [(b"location", location), (b"content-type", b"text/plain")],
                b"Redirecting to " + location + b"\n",
            )
            return
        for name in self.index:
            candidate = os.path.realpath(os.path.join(path, name))
            if not self.config.follow_outside_symlinks and not inside(self.root, candidate):
                continue
            try:
                fd = os.open(candidate, _OPEN_FLAGS)
            except OSError:
                continue
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                self._file(ctx, downstream, fd, candidate, st)
                return
            os.close(fd)
        if self.config.listing:
            body = _listing(ctx.path, path, self.config.dotfiles)
            downstream.respond(200, [(b"content-type", b"text/html; charset=utf-8")], body)
        else:
            downstream.error(403, "directory listing is not allowed")

    def _file(
        self,
        ctx: RequestContext,
        downstream: Downstream,
        fd: int,
        path: str,
        st: os.stat_result,
    ) -> Exchange | None:
        config = self.config
        size = st.st_size
        mtime = int(st.st_mtime) if config.last_modified else None
        etag = b'"%x-%x"' % (st.st_mtime_ns, size) if config.etag else None
        validators: HeaderList = []
        if etag is not None:
            validators.append((b"etag", etag))
        if mtime is not None:
            validators.append((b"last-modified", http_date(mtime)))
        if self.cache_control is not None:
            validators.append((b"cache-control", self.cache_control))
        if config.expires is not None:
            validators.append((b"expires", http_date(time.time() + config.expires)))
        status = precondition(ctx.method, ctx.headers, etag, mtime)
        ctype = self.content_type(path)
        if status == 304:
            os.close(fd)
            # The filters see the type and size the 200 would have (so compression adds the
            # same Vary); a 304 does not send them.
            probe = [*validators, (b"content-type", ctype), (b"content-length", b"%d" % size)]
            self.chain.run_response(ctx, 304, probe)
            sent = [h for h in probe if h[0] not in (b"content-type", b"content-length")]
            downstream.start_response(304, sent, 0)
            downstream.finish()
            return None
        if status == 412:
            os.close(fd)
            downstream.error(412, "a precondition of the request failed")
            return None
        headers: HeaderList = [(b"content-type", ctype), (b"accept-ranges", b"bytes")]
        headers += validators
        segments: list[tuple[bytes, int, int]] = [(b"", 0, size)]
        trailer = b""
        status = 200
        requested = get(ctx.headers, b"range") if ctx.method == "GET" else None
        if requested is not None:
            if_range = get(ctx.headers, b"if-range")
            if if_range is None or if_range_allows(if_range, etag, mtime):
                ranges = parse_range(requested, size)
                if ranges == []:
                    os.close(fd)
                    downstream.respond(
                        416, [(b"content-range", b"bytes */%d" % size), *validators], b""
                    )
                    return None
                if ranges:
                    status = 206
                    if len(ranges) == 1:
                        first, last = ranges[0]
                        headers.append((b"content-range", content_range(first, last, size)))
                        segments = [(b"", first, last - first + 1)]
                    else:
                        boundary = secrets.token_hex(12).encode()
                        headers[0] = (
                            b"content-type",
                            b"multipart/byteranges; boundary=" + boundary,
                        )
                        segments = [
                            (
                                b"\r\n--%s\r\ncontent-type: %s\r\ncontent-range: %s\r\n\r\n"
                                % (boundary, ctype, content_range(first, last, size)),
                                first,
                                last - first + 1,
                            )
                            for first, last in ranges
                        ]
                        trailer = b"\r\n--%s--\r\n" % boundary
        total = sum(len(p) + n for p, _, n in segments) + len(trailer)
        headers.append((b"content-length", b"%d" % total))
        self.chain.run_response(ctx, status, headers)
        filters = () if ctx.method == "HEAD" else self.chain.body_filters(headers)
        downstream.start_response(status, headers, None if filters else total)
        if ctx.method == "HEAD":
            os.close(fd)
            downstream.finish()
            return None
        if total <= SMALL_FILE:
            try:
                parts: list[bytes] = []
                for prefix, offset, count in segments:
                    chunk = os.pread(fd, count, offset)
                    if len(chunk) != count:
                        # The file shrank since fstat: the length is sent already, and a
                        # short body would leave the client's next response out of step.
                        downstream.abort("the file is shorter than its size said")
                        return None
                    parts += (prefix, chunk)
                data = b"".join(parts) + trailer
            finally:
                os.close(fd)
            data = FilterChain.finish_body(filters, ctx, data)
            downstream.write(data)
            downstream.finish()
            return None
        return FileSender(ctx, downstream, fd, segments, trailer, filters, config.sendfile)


_REFUSALS = {
    400: "the path is not allowed",
    403: "access to this path is not allowed",
    404: "no such file",
}


class FileSender:
    """Streams the byte segments of one open file to the client, then closes it."""

    __slots__ = (
        "_can_send",
        "_done",
        "ctx",
        "downstream",
        "fd",
        "filters",
        "segments",
        "sendfile",
        "trailer",
    )

    def __init__(
        self,
        ctx: RequestContext,
        downstream: Downstream,
        fd: int,
        segments: list[tuple[bytes, int, int]],
        trailer: bytes,
        filters: tuple[BodyFilter, ...],
        sendfile: bool,
    ) -> None:
        self.ctx = ctx
        self.downstream = downstream
        self.fd = fd
        self.segments = segments
        self.trailer = trailer
        self.filters = filters
        self.sendfile = sendfile and not filters
        self._can_send = asyncio.Event()
        self._can_send.set()
        self._done = False
        spawn(self._run(), "static file")

    async def _run(self) -> None:
        try:
            for prefix, offset, count in self.segments:
                if prefix:
                    self._write(prefix)
                await self._send(offset, count)
                if self._done:
                    return
            data = FilterChain.finish_body(self.filters, self.ctx, self.trailer)
            if data:
                self.downstream.write(data)
            self._done = True
            self.downstream.finish()
        except (ConnectionError, OSError) as e:
            if not self._done:
                self._done = True
                self.downstream.abort(f"sending a file failed: {e}")
        except Exception as e:
            # A body filter that fails must not leave the response hanging unfinished.
            log.exception("sending a file failed")
            if not self._done:
                self._done = True
                self.downstream.abort(f"sending a file failed: {e!r}")
        finally:
            os.close(self.fd)

    async def _send(self, offset: int, count: int) -> None:
        if self.sendfile and await self.downstream.send_file(self.fd, offset, count):
            return
        while count > 0 and not self._done:
            if not self._can_send.is_set():
                await self._can_send.wait()
                if self._done:
                    return
            data = os.pread(self.fd, min(CHUNK, count), offset)
            if not data:
                raise OSError("the file is shorter than its size said")
            offset += len(data)
            count -= len(data)
            self._write(data)
            # Let the loop serve other connections between reads of a big file.
            await asyncio.sleep(0)

    def _write(self, data: bytes) -> None:
        for method in self.filters:
            data = method(self.ctx, data, False)
        self.downstream.write(data)
        self.downstream.flush()

    # Exchange

    def on_request_body(self, data: bytes) -> None:
        return None

    def on_request_end(self) -> None:
        return None

    def on_downstream_pause(self) -> None:
        self._can_send.clear()

    def on_downstream_resume(self) -> None:
        self._can_send.set()

    def on_downstream_lost(self) -> None:
        self._done = True
        self._can_send.set()


def _listing(url_path: bytes, directory: str, dotfiles: bool) -> bytes:
    title = html.escape(unquote_to_bytes(url_path).decode("utf-8", "replace"))
    rows = []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") and not dotfiles:
                continue
            name = entry.name + ("/" if entry.is_dir() else "")
            rows.append(f'<li><a href="{quote(name)}">{html.escape(name)}</a></li>')
    return (
        f"<html><head><title>Index of {title}</title></head><body>"
        f"<h1>Index of {title}</h1><ul>{''.join(rows)}</ul></body></html>\n"
    ).encode()
