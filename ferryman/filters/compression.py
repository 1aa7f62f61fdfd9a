"""Response compression: gzip, brotli and (when ``zstandard`` is installed) zstd.

The choice is made once per response in ``on_response``: the client's ``Accept-Encoding``
(q-values, the server's order among equals), the media type, the length, and the cases that
must not be touched (already encoded, partial content, 204/304, ``no-transform``).
When it compresses, it drops Content-Length, weakens a strong ETag (the bytes differ from
the identity representation's), and says ``Vary: Accept-Encoding``. Every response of a
compressible type says Vary, 206 and 304 included, and a HEAD gets the headers its GET
would (Content-Encoding, no Content-Length, the weak ETag), so caches see one resource.

The body is compressed chunk by chunk as it streams: each chunk's output is flushed at once
(a sync flush costs a few bytes), so a slow upstream's data reaches the client as it comes
instead of waiting in the compressor. Nothing is buffered beyond the compressor's window.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

import brotli

from ferryman.config.schema import Compression as CompressionConfig
from ferryman.context import RequestContext
from ferryman.filters.base import Filter
from ferryman.http.headers import HeaderList, get, remove, set_

zstandard: Any
try:
    import zstandard
except ImportError:  # pragma: no cover - zstd is optional at run time
    zstandard = None

_STATE_KEY = "compression.encoder"
_NAMES = {"br": b"br", "gzip": b"gzip", "zstd": b"zstd"}


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def finish(self, data: bytes) -> bytes: ...


class _Gzip:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        # wbits 31: a gzip header and trailer around the deflate stream.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._z.compress(data) + self._z.flush()


class _Brotli:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        # A 512 KiB window (nginx brotli's default) rather than 4 MiB: memory per stream.
        self._c = brotli.Compressor(quality=level, lgwin=19)

    def compress(self, data: bytes) -> bytes:
        c = self._c
        return c.process(data) + c.flush()  # type: ignore[attr-defined,no-any-return]

    def finish(self, data: bytes) -> bytes:
        return self._c.process(data) + self._c.finish()


class _Zstd:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        assert zstandard is not None
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        c = self._c
        out: bytes = c.compress(data) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self, data: bytes) -> bytes:
        out: bytes = self._c.compress(data) + self._c.flush()
        return out


_ENCODERS: dict[str, type[Any]] = {"gzip": _Gzip, "br": _Brotli, "zstd": _Zstd}


def parse_accept_encoding(value: bytes) -> dict[str, float]:
    """Coding name (lower case) to q-value; ``*`` stands for the codings not named."""
    prefs: dict[str, float] = {}
    for item in value.split(b","):
        name, _, params = item.partition(b";")
        coding = name.strip().lower().decode("latin-1")
        if not coding:
            continue
        q = 1.0
        for param in params.split(b";"):
            key, _, val = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = min(1.0, max(0.0, float(val.strip())))
                except ValueError:
                    q = 0.0
        if coding == "x-gzip":
            coding = "gzip"
        prefs[coding] = max(q, prefs.get(coding, q))
    return prefs


def choose_encoding(accept: bytes, offered: tuple[str, ...]) -> str | None:
    """The offered coding the client rates highest (first offered among equals), or None."""
    prefs = parse_accept_encoding(accept)
    star = prefs.get("*", 0.0)
    best, best_q = None, 0.0
    for name in offered:
        q = prefs.get(name, star)
        if q > best_q:
            best, best_q = name, q
    return best


class Compression(Filter):
    """Compresses responses of the configured types for clients that accept it."""

    body_length_aware = True

    def __init__(self, config: CompressionConfig) -> None:
        super().__init__()
        offered = [a for a in config.algorithms if a != "zstd" or zstandard is not None]
        self.offered = tuple(dict.fromkeys(offered))
        self.levels: dict[str, int] = {"gzip": 5, "br": 4, "zstd": 3}
        for name, level in config.level.items():
            self.levels[name] = level
        self.min_length = config.min_length
        exact: set[bytes] = set()
        families: list[bytes] = []
        for t in config.types:
            t = t.strip().lower()
            if t.endswith("/*"):
                families.append(t[:-1].encode("latin-1"))
            else:
                exact.add(t.encode("latin-1"))
        self.exact_types = frozenset(exact)
        self.families = tuple(families)
        # Clients send few distinct Accept-Encoding values: parse each once.
        self._choices: dict[bytes, str | None] = {}

    def compressible(self, ctype: bytes) -> bool:
        media = ctype.partition(b";")[0].strip().lower()
        return media in self.exact_types or media.startswith(self.families)

    def _choose(self, accept: bytes) -> str | None:
        choices = self._choices
        try:
            return choices[accept]
        except KeyError:
            pass
        choice = choose_encoding(accept, self.offered)
        if len(choices) < 512:
            choices[accept] = choice
        return choice

    def on_response(self, ctx: RequestContext, status: int, headers: HeaderList) -> None:
        """Choose the coding. Every response of a compressible type says ``Vary:
        Accept-Encoding``, 206 and 304 too; a HEAD gets the headers its GET would have."""
        if status < 200 or status == 204:
            return
        ctype = length = etag = whole = None
        partial = status == 206
        for k, v in headers:
            if k == b"content-type":
                ctype = v
            elif k == b"content-length":
                length = v
            elif k == b"etag":
                etag = v
            elif k == b"content-encoding":
                if v.strip().lower() != b"identity":
                    return
            elif k == b"cache-control" and b"no-transform" in v.lower():
                return  # the origin forbids changing the bytes
            elif k == b"content-range":
                partial = True
                whole = v.rpartition(b"/")[2]  # the whole representation's size
        if status == 304 and ctype is None:
            _add_vary(headers)  # the type is not known here: the 200 may well vary
            return
        if ctype is None or not self.compressible(ctype):
            return
        if whole is not None:
            length = whole
        length = length.strip() if length is not None else None
        if length is not None and length.isdigit() and int(length) < self.min_length:
            return
        _add_vary(headers)
        if partial or status == 304:
            return  # a range of the identity bytes, or no body: nothing to compress
        accept = get(ctx.headers, b"accept-encoding")
        if accept is None:
            return
        coding = self._choose(accept)
        if coding is None:
            return
        if ctx.method != "HEAD":  # a HEAD has no body to compress, only GET's headers
            ctx.state[_STATE_KEY] = _ENCODERS[coding](self.levels[coding])
        remove(headers, (b"content-length", b"accept-ranges"))
        set_(headers, b"content-encoding", _NAMES[coding])  # replaces an "identity"
        if etag is not None and etag.startswith(b'"'):
            set_(headers, b"etag", b"W/" + etag)

    def on_response_body(self, ctx: RequestContext, data: bytes, end: bool) -> bytes:
        encoder: Encoder | None = ctx.state.get(_STATE_KEY)
        if encoder is None:
            return data
        if end:
            del ctx.state[_STATE_KEY]
            return encoder.finish(data)
        return encoder.compress(data) if data else b""


def _add_vary(headers: HeaderList) -> None:
    for k, v in headers:
        if k == b"vary":
            lower = v.lower()
            if b"accept-encoding" in lower or v.strip() == b"*":
                return
    headers.append((b"vary", b"Accept-Encoding"))
