"""Preconditions and byte ranges (RFC 9110 13 and 14) without sockets."""

from __future__ import annotations

import pytest

from ferryman.http.conditional import (
    MAX_RANGES,
    etag_matches,
    http_date,
    if_range_allows,
    parse_http_date,
    parse_range,
    precondition,
)
from ferryman.http.headers import HeaderList

ETAG = b'"5f-2a"'
MTIME = 1_700_000_000


def h(**values: str) -> HeaderList:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in values.items()]


def test_dates_round_trip() -> None:
    assert http_date(MTIME) == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert parse_http_date(http_date(MTIME)) == MTIME
    assert parse_http_date(b"Tuesday, 14-Nov-23 22:13:20 GMT") == MTIME  # RFC 850 form
    assert parse_http_date(b"not a date") is None
    assert parse_http_date(b"Tue, 14 Nov 2023 22:13:20") is None  # no zone: not HTTP


def test_etag_comparison() -> None:
    assert etag_matches(b'"x", "5f-2a"', ETAG, weak=False)
    assert etag_matches(b"*", ETAG, weak=False)
    assert etag_matches(b'W/"5f-2a"', ETAG, weak=True)
    assert not etag_matches(b'W/"5f-2a"', ETAG, weak=False)
    assert not etag_matches(ETAG, b'W/"5f-2a"', weak=False)
    assert not etag_matches(b'"other"', ETAG, weak=True)


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", h(if_none_match=ETAG.decode()), 304),
        ("HEAD", h(if_none_match='W/"5f-2a"'), 304),
        ("GET", h(if_none_match='"stale"'), 0),
        ("POST", h(if_none_match="*"), 412),
        ("GET", h(if_modified_since=http_date(MTIME).decode()), 304),
        ("GET", h(if_modified_since=http_date(MTIME - 1).decode()), 0),
        ("GET", h(if_modified_since="garbage"), 0),
        # A tag that does not match wins over a date that would.
        ("GET", h(if_none_match='"stale"', if_modified_since=http_date(MTIME).decode()), 0),
        ("GET", h(if_match='"stale"'), 412),
        ("GET", h(if_match=ETAG.decode()), 0),
        ("GET", h(if_unmodified_since=http_date(MTIME - 10).decode()), 412),
        ("GET", h(if_unmodified_since=http_date(MTIME).decode()), 0),
        ("GET", [], 0),
    ],
)
def test_preconditions(method: str, headers: HeaderList, status: int) -> None:
    assert precondition(method, headers, ETAG, MTIME) == status


def test_dates_ignored_without_last_modified() -> None:
    headers = h(if_modified_since=http_date(MTIME).decode())
    assert precondition("GET", headers, ETAG, None) == 0


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        (b"bytes=0-99", [(0, 99)]),
        (b"bytes=0-", [(0, 999)]),
        (b"bytes=-100", [(900, 999)]),
        (b"bytes=-5000", [(0, 999)]),
        (b"bytes=900-5000", [(900, 999)]),
        (b"bytes=0-0, 10-19,-1", [(0, 0), (10, 19), (999, 999)]),
        (b"BYTES = 5-6", [(5, 6)]),
        (b"bytes=1000-", []),  # unsatisfiable: 416
        (b"bytes=2000-3000", []),
        (b"bytes=-0", []),
        (b"bytes=5-1", None),  # malformed: ignored
        (b"bytes=abc", None),
        (b"bytes=1-2-3", None),
        (b"items=0-1", None),
        (b"bytes=-", None),
        (b"bytes=" + b",".join([b"0-1"] * (MAX_RANGES + 1)), None),
        # Overlapping and adjacent ranges are merged, in order.
        (b"bytes=10-19,0-9,15-30,50-60", [(0, 30), (50, 60)]),
        (b"bytes=0-10,5-20,-1", [(0, 20), (999, 999)]),
        # Ranges that together ask for more than the file: sent whole.
        (b"bytes=" + b",".join([b"0-"] * MAX_RANGES), None),
        (b"bytes=0-600,100-700", None),
        # Bounds too long for int(): past the end of any file, never an exception.
        (b"bytes=0-" + b"9" * 5000, [(0, 999)]),
        (b"bytes=" + b"9" * 5000 + b"-", []),
        (b"bytes=-" + b"9" * 5000, [(0, 999)]),
    ],
)
def test_ranges(value: bytes, ranges: list[tuple[int, int]] | None) -> None:
    assert parse_range(value, 1000) == ranges


def test_if_range() -> None:
    assert if_range_allows(ETAG, ETAG, MTIME)
    assert not if_range_allows(b'"other"', ETAG, MTIME)
    assert not if_range_allows(b'W/"5f-2a"', ETAG, MTIME)  # weak never allows
    assert if_range_allows(http_date(MTIME), ETAG, MTIME)
    assert not if_range_allows(http_date(MTIME - 1), ETAG, MTIME)
    assert not if_range_allows(http_date(MTIME), ETAG, None)
