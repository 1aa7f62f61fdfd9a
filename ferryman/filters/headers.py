"""Header edits on the request sent upstream and on the response sent to the client."""

from __future__ import annotations

from typing import Final

from ferryman.config.schema import HeaderEdits
from ferryman.context import RequestContext
from ferryman.filters.base import Filter
from ferryman.http.headers import HeaderList

# nginx's add_header applies to these unless ``always`` is set.
_SUCCESS: Final = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


class _Edits:
    __slots__ = ("add", "drop", "set")

    def __init__(self, edits: HeaderEdits) -> None:
        self.set = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in edits.set.items()
        ]
        self.add = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in edits.add.items()
        ]
        self.drop = frozenset(
            [k.lower().encode("latin-1") for k in edits.remove] + [k for k, _ in self.set]
        )

    def apply(self, headers: HeaderList) -> None:
        if self.drop:
            drop = self.drop
            headers[:] = [h for h in headers if h[0] not in drop]
        headers.extend(self.set)
        headers.extend(self.add)


class RequestHeaders(Filter):
    """Edits the headers of the request to the upstream (nginx ``proxy_set_header``)."""

    def __init__(self, edits: HeaderEdits) -> None:
        super().__init__()
        self._edits = _Edits(edits)

    def on_upstream_request(self, ctx: RequestContext, headers: HeaderList) -> None:
        self._edits.apply(headers)


class ResponseHeaders(Filter):
    """Edits the response headers (nginx ``add_header``, ``always`` by default)."""

    def __init__(self, edits: HeaderEdits) -> None:
        super().__init__()
        self._edits = _Edits(edits)
        self._always = edits.always

    def on_response(self, ctx: RequestContext, status: int, headers: HeaderList) -> None:
        if self._always or status in _SUCCESS:
            self._edits.apply(headers)
