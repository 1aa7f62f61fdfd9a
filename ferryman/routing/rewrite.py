"""Path rewrites applied to the request target before it is proxied."""

from __future__ import annotations

import re
from collections.abc import Callable

from ferryman.config.schema import Rewrite

Rewriter = Callable[[bytes], bytes]


def compile_rewrite(rewrite: Rewrite, route_path: str, match: str) -> Rewriter:
    """A function from path (bytes, no query) to the rewritten path."""
    if rewrite.regex is not None:
        pattern = re.compile(rewrite.regex.encode())
        # Accept ``$1`` as well as ``\1`` for groups, as nginx users write them.
        repl = re.sub(r"\$(\d+)", r"\\\1", rewrite.replacement).encode()

        def by_regex(path: bytes) -> bytes:
            return pattern.sub(repl, path, count=1)

        return by_regex
    if match != "prefix":
        raise ValueError("strip_prefix and replace_prefix need a prefix route")
    prefix = route_path.encode()
    new = (rewrite.replace_prefix or "").encode()

    def by_prefix(path: bytes) -> bytes:
        rest = path[len(prefix) :]
        out = new + rest
        if not out.startswith(b"/"):
            out = b"/" + out
        return out

    return by_prefix
