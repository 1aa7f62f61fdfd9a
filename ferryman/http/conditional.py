"""Conditional and range requests (RFC 9110 13 and 14), as pure functions over header values.

The static-file handler feeds them a file's validators (ETag, modification time) and size;
they answer which status the request gets and which byte ranges to send. Nothing here does
I/O, so every rule is tested without a socket.
"""

from __future__ import annotations

import time
from email.utils import formatdate, parsedate_to_datetime

from ferryman.http.headers import HeaderList, get

# More ranges than this in one request is served whole: many tiny or overlapping ranges
# make a response far larger than the file (a known amplification trick).
MAX_RANGES = 32


def http_date(timestamp: float) -> bytes:
    return formatdate(timestamp, usegmt=True).encode("ascii")


class _Clock:
    second = -1
    value = b""


_clock = _Clock()


def date_now() -> bytes:
    """The ``Date`` of a response Ferryman makes itself, formatted once a second."""
    second = int(time.time())
    if _clock.second != second:
        _clock.second = second
        _clock.value = http_date(second)
    return _clock.value


def parse_http_date(value: bytes) -> float | None:
    """Seconds since the epoch from an HTTP date, or None when it is not one."""
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def _tags(value: bytes) -> list[bytes]:
    return [t.strip() for t in value.split(b",") if t.strip()]


def etag_matches(header: bytes, etag: bytes, weak: bool) -> bool:
    """Whether ``etag`` is in the If-Match / If-None-Match list ``header``. Weak comparison
    ignores ``W/``; strong comparison never matches a weak tag."""
    if header.strip() == b"*":
        return True
    if weak:
        mine = etag.removeprefix(b"W/")
        return any(t.removeprefix(b"W/") == mine for t in _tags(header))
    if etag.startswith(b"W/"):
        return False
    return any(t == etag for t in _tags(header))


def precondition(method: str, headers: HeaderList, etag: bytes | None, mtime: int | None) -> int:
    """The status the preconditions give: 0 to go on, 304 Not Modified or 412 Failed.

    ``mtime`` is whole seconds, the resolution of Last-Modified; None when the resource
    has no Last-Modified, so dates cannot be compared. The order and the
    "ignore the date when a tag is given" rules are RFC 9110 13.2.2.
    """
    if_match = get(headers, b"if-match")
    if if_match is not None:
        if etag is None or not etag_matches(if_match, etag, weak=False):
            return 412
    else:
        since = get(headers, b"if-unmodified-since")
        if since is not None and mtime is not None:
            when = parse_http_date(since)
            if when is not None and mtime > when:
                return 412
    if_none = get(headers, b"if-none-match")
    if if_none is not None:
        if etag is not None and etag_matches(if_none, etag, weak=True):
            return 304 if method in ("GET", "HEAD") else 412
        return 0
    if method in ("GET", "HEAD") and mtime is not None:
        since = get(headers, b"if-modified-since")
        if since is not None:
            when = parse_http_date(since)
            if when is not None and mtime <= when:
                return 304
    return 0


def if_range_allows(value: bytes, etag: bytes | None, mtime: int | None) -> bool:
    """Whether an If-Range validator still matches, so the Range applies (strong match
    only: a weak tag or a date that is not exact means "send it all")."""
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return etag is not None and not value.startswith(b"W/") and value == etag
    when = parse_http_date(value)
    return when is not None and mtime is not None and int(when) == mtime


Ranges = list[tuple[int, int]]


# A bound longer than this is past the end of any file (and int() refuses over 4300 digits).
_MAX_DIGITS = 18


def _bound(digits: bytes) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_range(value: bytes, size: int) -> Ranges | None:
    """The byte ranges ``value`` asks for, as (first, last) inclusive pairs clipped to
    ``size``, sorted, overlapping and adjacent ones merged. None means "ignore the header
    and send the whole file" (not bytes, malformed, too many ranges, or ranges that together
    ask for more than the file); an empty list means none is satisfiable (416)."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    parts = [p.strip() for p in spec.split(b",")]
    if not parts or len(parts) > MAX_RANGES:
        return None
    ranges: Ranges = []
    for part in parts:
        first_s, dash, last_s = part.partition(b"-")
        if not dash:
            return None
        first_s, last_s = first_s.strip(), last_s.strip()
        if not (first_s.isdigit() or not first_s) or not (last_s.isdigit() or not last_s):
            return None
        if not first_s:
            if not last_s:
                return None
            suffix = _bound(last_s)  # the last N bytes
            if suffix == 0 or size == 0:
                continue
            ranges.append((max(0, size - suffix), size - 1))
            continue
        first = _bound(first_s)
        if last_s and _bound(last_s) < first:
            return None
        if first >= size:
            continue
        last = _bound(last_s) if last_s else size - 1
        ranges.append((first, min(last, size - 1)))
    if len(ranges) < 2:
        return ranges
    if sum(last - first + 1 for first, last in ranges) > size:
        return None  # more bytes than the file: it is cheaper sent whole
    ranges.sort()
    merged: Ranges = [ranges[0]]
    for first, last in ranges[1:]:
        prev_first, prev_last = merged[-1]
        if first <= prev_last + 1:
            merged[-1] = (prev_first, max(prev_last, last))
        else:
            merged.append((first, last))
    return merged


def content_range(first: int, last: int, size: int) -> bytes:
    return b"bytes %d-%d/%d" % (first, last, size)
