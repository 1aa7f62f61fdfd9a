"""The test origin of ``origin.py`` behind TLS, for HTTPS through proxies.

Run as ``python -m tests.support.tls_origin --listen 127.0.0.1:443 --cert C --key K``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl

from tests.support.origin import Origin


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", default="secure")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    origin = Origin(args.name)
    server = await asyncio.start_server(origin.handle, host.strip("[]"), int(port), ssl=context)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"ready {os.getpid()}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
