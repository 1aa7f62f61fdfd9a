"""Bodies of the errors Ferryman answers itself (404 no route, 502, 504, 4xx on bad input)."""

from __future__ import annotations

import html
import json

from ferryman.http.h1 import reason_phrase


def error_body(status: int, message: str, fmt: str = "json") -> tuple[bytes, bytes]:
    """(content type, body) for an error; ``message`` says what went wrong for the client."""
    title = reason_phrase(status).decode()
    if fmt == "html":
        text = html.escape(message)
        body = (
            f"<html><head><title>{status} {title}</title></head><body>"
            f"<h1>{status} {title}</h1><p>{text}</p><hr><p>ferryman</p></body></html>\n"
        )
        return b"text/html; charset=utf-8", body.encode()
    return b"application/json", json.dumps({"error": title, "message": message}).encode()
