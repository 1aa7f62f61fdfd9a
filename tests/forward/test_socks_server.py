"""The SOCKS listener's connection object, driven with a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from ferryman.config.loader import parse_config
from ferryman.forward import socks5
from ferryman.forward.service import ForwardProxy
from ferryman.forward.shacrypt import sha_crypt
from ferryman.forward.socks_server import SocksConnection


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.reading = True
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True


def _service() -> ForwardProxy:
    hashed = sha_crypt(b"wonderland", "$5$rounds=1000$sockstest")
    config = parse_config(
        "forward:\n  socks5_listen: ['127.0.0.1:1080']\n"
        f"  auth: {{users: {{alice: {{password: '{hashed}'}}}}}}\n"
        "  access_log: {enabled: false}\n"
    )
    assert config.forward is not None
    return ForwardProxy(config.forward)


def test_reading_stops_while_credentials_are_checked_and_flooding_fails() -> None:
    async def main() -> None:
        conn = SocksConnection(_service(), 1080)
        t = FakeTransport()
        conn.connection_made(t)
        conn.data_received(b"\x05\x01\x02")
        assert t.written == b"\x05\x02" and t.reading
        conn.data_received(b"\x01\x05alice\x0awonderland")
        assert not t.reading  # waiting for the password check: nothing more is read
        for _ in range(3):
            await asyncio.sleep(0.05)
            if t.reading:
                break
        assert t.reading and t.written.endswith(b"\x01\x00")  # checked: reading again
        conn.data_received(b"\x05\x01\x00\x01\x7f\x00\x00\x02\x01\xbb")
        assert not t.reading  # waiting for the connect
        conn.data_received(b"z" * (socks5.MAX_PENDING + 1))
        assert t.closed
        await asyncio.sleep(0.1)  # the refused connect finds the connection closed

    asyncio.run(main())
