"""The forward access log's lines."""

from __future__ import annotations

import json

from ferryman.context import RequestContext
from ferryman.forward.log import record, text_line


def test_text_and_json_fields() -> None:
    ctx = RequestContext(
        "127.0.0.1", 50000, 3128, "http", "GET", b"http://a.test/x y", "1.1", [], "a.test:80"
    )
    ctx.user, ctx.status, ctx.bytes_received, ctx.bytes_sent = "alice", 403, 12, 34
    ctx.error = 'blocked "here"'
    rec = record(ctx)
    assert rec["client"] == "127.0.0.1:50000" and rec["user"] == "alice"
    assert (rec["up"], rec["down"], rec["status"]) == (12, 34, 403)
    line = text_line(rec)
    assert 'target="http://a.test/x y"' in line
    assert 'reason="blocked \\"here\\""' in line
    assert " dest=a.test:80 " in line and line.startswith("time=")
    assert json.loads(json.dumps(rec))["reason"] == 'blocked "here"'


def test_text_line_escapes_control_characters() -> None:
    ctx = RequestContext("127.0.0.1", 50000, 3128, "http", "GET", b"", "1.1", [], "a.test:80")
    ctx.user = "mallory\ncarol"
    ctx.error = "tab\there\rbell\x07del\x7fsep\u2028"
    assert "\n" not in text_line({"user": "a\nb"})
    line = text_line(record(ctx))
    assert line.isprintable()  # one record, one line: no CR, LF or other control characters
    assert 'user="mallory\\ncarol"' in line
    assert 'reason="tab\\there\\rbell\\u0007del\\u007fsep\\u2028"' in line
    assert text_line({"k": "a\\b"}) == 'k="a\\\\b"'
    rest = line.split(" reason=", 1)[1]
    assert json.loads(rest) == ctx.error  # the quoted value is a JSON string
