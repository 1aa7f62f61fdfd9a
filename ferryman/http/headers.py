"""Header lists, and the message rules a proxy applies to them (which headers cross it,
which responses have no body).

Headers are kept as a list of ``(name, value)`` byte pairs with lower-case names, the shape
HTTP/2 uses on the wire, so the pipeline does not care which protocol a request came in on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

HeaderList = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1, plus the legacy ones every proxy strips.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def get(headers: HeaderList, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def get_all(headers: HeaderList, name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def remove(headers: HeaderList, names: Iterable[bytes]) -> None:
    drop = set(names)
    headers[:] = [(k, v) for k, v in headers if k not in drop]


def set_(headers: HeaderList, name: bytes, value: bytes) -> None:
    """Replace every ``name`` with one ``value`` (in place of the first one, if any)."""
    for i, (k, _) in enumerate(headers):
        if k == name:
            headers[i] = (name, value)
            headers[i + 1 :] = [(k2, v2) for k2, v2 in headers[i + 1 :] if k2 != name]
            return
    headers.append((name, value))


# Headers a Connection token may not remove: they frame the message or name its target, and
# a peer that could strip them could smuggle a second message inside the body of the first.
PROTECTED: Final = frozenset({b"content-length", b"host", b"transfer-encoding"})


def connection_tokens(headers: HeaderList) -> set[bytes]:
    tokens: set[bytes] = set()
    for k, v in headers:
        if k == b"connection":
            tokens.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return tokens - PROTECTED


# Statuses whose responses never carry a body, whatever their headers say (RFC 9110 15.3.5,
# 15.4.5), like every response to HEAD.
BODYLESS_STATUS: Final = frozenset({204, 304})

# ``connection`` value meaning "not known: look at the headers".
UNKNOWN: Final = b"\0"


def strip_hop_by_hop(
    headers: HeaderList, drop: frozenset[bytes] = HOP_BY_HOP, connection: bytes | None = UNKNOWN
) -> HeaderList:
    """A copy without hop-by-hop headers (``drop``), nor those the Connection header names.

    A parser that already knows the one Connection value (or that there is none) passes it
    as ``connection`` and spares a second look at the list."""
    kept = [h for h in headers if h[0] not in drop]
    if len(kept) == len(headers) or connection is None:
        return kept
    # "keep-alive" and "close" name nothing beyond what was dropped already.
    if connection is not UNKNOWN:
        if connection.lower() in _PLAIN_CONNECTION:
            return kept
    elif all(v.lower() in _PLAIN_CONNECTION for k, v in headers if k == b"connection"):
        return kept
    tokens = connection_tokens(headers)
    return [h for h in kept if h[0] not in tokens]


_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade"})
