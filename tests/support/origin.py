"""A real HTTP/1.1 origin server for tests, built on h11 (independent of Ferryman's parser).

Run as ``python -m tests.support.origin --listen 127.0.0.1:3001 --name users``.

Every response carries ``X-Origin: <name>``. By default it answers with JSON describing the
request it got (method, target, headers, body). Query parameters change the answer:
``status=N``, ``delay=SECONDS`` (before the head), ``size=N`` (a body of N bytes),
``chunked=1`` (chunked framing), ``close=1`` (body delimited by closing), ``json=N`` (a JSON
body of about N bytes), ``type=TYPE`` (Content-Type). Upgrade requests for WebSocket get a
101 and an echo of every message; ``?refuse=1`` refuses the upgrade with 403.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import signal
import ssl
import struct
from urllib.parse import parse_qs, urlsplit

import h11

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Origin:
    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = await self._next_event(conn, reader)
                if event is None or isinstance(event, h11.ConnectionClosed):
                    break
                if not isinstance(event, h11.Request):
                    break
                body = b""
                while True:
                    ev = await self._next_event(conn, reader)
                    if isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage) or ev is None:
                        break
                    else:
                        break
                upgraded = await self._respond(conn, writer, reader, event, body)
                if upgraded or conn.our_state is h11.MUST_CLOSE:
                    break
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            return event

    async def _respond(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        req: h11.Request,
        body: bytes,
    ) -> bool:
        self.requests += 1
        target = req.target.decode()
        query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
        headers = {k.decode().lower(): v.decode() for k, v in req.headers}
        if "delay" in query:
            await asyncio.sleep(float(query["delay"]))
        common = [(b"x-origin", self.name.encode())]
        if headers.get("upgrade", "").lower() == "websocket":
            if query.get("refuse"):
                payload = b'{"refused": true}'
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nx-origin: %s\r\n\r\n%s"
                    % (len(payload), self.name.encode(), payload)
                )
                await writer.drain()
                return True
            key = headers["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-accept: " + accept + b"\r\n"
                b"x-origin: " + self.name.encode() + b"\r\n\r\n"
            )
            await writer.drain()
            leftover, _ = conn.trailing_data
            await ws_echo(reader, writer, leftover)
            return True
        status = int(query.get("status", 200))
        ctype = query.get("type", "application/json")
        if "size" in query:
            payload = b"x" * int(query["size"])
            ctype = query.get("type", "application/octet-stream")
        elif "json" in query:
            n = int(query["json"])
            payload = json.dumps({"data": "y" * max(0, n - 12)}).encode()
        else:
            payload = json.dumps(
                {
                    "origin": self.name,
                    "method": req.method.decode(),
                    "path": target,
                    "headers": headers,
                    "body": body.decode("latin-1"),
                }
            ).encode()
        out_headers = [*common, (b"content-type", ctype.encode())]
        if req.method == b"HEAD" or status in (204, 304):
            payload_to_send = b""
            if status not in (204, 304):
                out_headers.append((b"content-length", str(len(payload)).encode()))
        else:
            payload_to_send = payload
            if query.get("chunked"):
                out_headers.append((b"transfer-encoding", b"chunked"))
            elif query.get("close"):
                out_headers.append((b"connection", b"close"))
            else:
                out_headers.append((b"content-length", str(len(payload)).encode()))
        writer.write(conn.send(h11.Response(status_code=status, headers=out_headers)))
        if payload_to_send:
            step = 16384 if query.get("chunked") else len(payload_to_send)
            for i in range(0, len(payload_to_send), step):
                writer.write(conn.send(h11.Data(data=payload_to_send[i : i + step])))
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return False


async def ws_echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytes
) -> None:
    buf = bytearray(pending)

    async def need(n: int) -> bytes:
        while len(buf) < n:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("eof")
            buf.extend(data)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    while True:
        b1, b2 = await need(2)
        opcode = b1 & 0x0F
        length = b2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await need(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await need(8))
        mask = await need(4) if b2 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await need(length)))
        if opcode == 0x9:  # ping -> pong
            opcode = 0xA
        header = bytes([0x80 | opcode])
        if len(data) < 126:
            header += bytes([len(data)])
        elif len(data) < 65536:
            header += bytes([126]) + struct.pack("!H", len(data))
        else:
            header += bytes([127]) + struct.pack("!Q", len(data))
        writer.write(header + data)
        await writer.drain()
        if opcode == 0x8:
            return


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", default="origin")
    args = parser.parse_args()
    await serve(Origin(args.name), args.listen)


async def serve(origin: Origin, listen: str, tls: ssl.SSLContext | None = None) -> None:
    """Serve ``origin`` on ``listen`` until SIGTERM or SIGINT; prints ``ready PID`` first."""
    host, _, port = listen.rpartition(":")
    server = await asyncio.start_server(origin.handle, host.strip("[]"), int(port), ssl=tls)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"ready {os.getpid()}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
