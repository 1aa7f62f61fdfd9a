"""The test origin of ``origin.py`` behind TLS, for HTTPS through proxies.

Run as ``python -m tests.support.tls_origin --listen 127.0.0.1:443 --cert C --key K``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

from tests.support.origin import Origin, serve


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--name", default="secure")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    await serve(Origin(args.name), args.listen, context)


if __name__ == "__main__":
    asyncio.run(main())
