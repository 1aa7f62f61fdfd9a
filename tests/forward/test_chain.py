"""Parent-proxy handshakes, scripted (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from ferryman.config.forward import ChainRule, parse_parent
from ferryman.forward.acl import Refused
from ferryman.forward.chain import ChainRouter, http_connect


class ScriptedStream:
    def __init__(self, answer: bytes) -> None:
        self.sent = b""
        self.answer = answer

    def write(self, data: bytes) -> None:
        self.sent += data

    async def read_some(self) -> bytes:
        data, self.answer = self.answer, b""
        return data


@pytest.mark.parametrize(
    "host", ["a.test\r\nX-Injected: 1", "a.test\nb", "a b.test", "a.test:80", "fe80::1%eth0"]
)
def test_http_connect_refuses_names_that_would_break_the_request(host: str) -> None:
    stream = ScriptedStream(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(Refused):
        asyncio.run(http_connect(stream, host, 443, parse_parent("http://127.0.0.1:3128")))
    assert stream.sent == b""


def test_http_connect_sends_the_ascii_authority() -> None:
    stream = ScriptedStream(b"HTTP/1.1 200 OK\r\n\r\nrest")
    parent = parse_parent("http://127.0.0.1:3128")
    assert asyncio.run(http_connect(stream, "xn--bcher-kva.test", 443, parent)) == b"rest"
    assert stream.sent.startswith(b"CONNECT xn--bcher-kva.test:443 HTTP/1.1\r\n")
    stream = ScriptedStream(b"HTTP/1.1 200 OK\r\n\r\n")
    asyncio.run(http_connect(stream, "::1", 443, parent))
    assert stream.sent.startswith(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n")


def test_chain_rules_match_idns_in_ascii() -> None:
    router = ChainRouter([ChainRule(match=[".bücher.test"], via="http://127.0.0.1:3128")])
    assert router.pick("xn--bcher-kva.test") is not None
    assert router.pick("www.xn--bcher-kva.test") is not None
    assert router.pick("bücher.test") is not None
