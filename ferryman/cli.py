"""Command line: ``run``, ``check``, ``proxy``, ``version``. No logic of its own."""

from __future__ import annotations

import argparse
import os
import sys

from ferryman import __version__
from ferryman._compiled import compiled
from ferryman.build import BuildError, Runtime
from ferryman.config.loader import ConfigError, load_config, summary
from ferryman.config.schema import Config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferryman", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve a config file in the foreground")
    run.add_argument("-c", "--config", required=True, help="the YAML config file")
    run.add_argument("--workers", type=int, help="worker processes (default: the config's)")
    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("config")
    proxy = sub.add_parser("proxy", help="a quick reverse proxy with no config file")
    proxy.add_argument("--listen", default="127.0.0.1:8080")
    proxy.add_argument("--to", action="append", required=True, help="upstream URL (repeatable)")
    proxy.add_argument("--workers", type=int, default=1)
    sub.add_parser("version", help="print the version")
    cert = sub.add_parser("cert", help="make a development certificate signed by a local CA")
    cert.add_argument("names", nargs="+", help="DNS names, *.wildcards or IP addresses")
    cert.add_argument("--cert", help="certificate file (default: ./NAME.pem)")
    cert.add_argument("--key", help="private key file (default: ./NAME.key)")
    cert.add_argument(
        "--ca-dir",
        help="the CA's directory (default: $FERRYMAN_CA_DIR or ~/.local/share/ferryman/ca)",
    )
    cert.add_argument("--days", type=int, default=825)
    args = parser.parse_args(argv)

    if args.command == "version":
        build = "hot path compiled with mypyc" if compiled() else "plain Python"
        print(f"ferryman {__version__} ({build})")
        return 0
    if args.command == "cert":
        return make_cert_command(args.names, args.cert, args.key, args.ca_dir, args.days)
    try:
        if args.command == "check":
            config = load_config(args.config)
            sys.path.insert(0, os.path.dirname(os.path.abspath(args.config)))
            Runtime(config)
            print(f"{args.config}: OK")
            print(summary(config))
            return 0
        if args.command == "proxy":
            config = quick_config(args.listen, args.to)
            return serve(config, args.workers)
        config = load_config(args.config)
        # Plugins named in a config may live beside it, like the examples' hooks.
        sys.path.insert(0, os.path.dirname(os.path.abspath(args.config)))
        return serve(config, args.workers)
    except (ConfigError, BuildError) as e:
        print(f"ferryman: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"ferryman: {e}", file=sys.stderr)
        return 1


def make_cert_command(
    names: list[str], cert: str | None, key: str | None, ca_dir: str | None, days: int
) -> int:
    from pathlib import Path

    from ferryman.tls import TlsError
    from ferryman.tls.certs import CA_CERT, default_ca_dir, make_cert

    stem = names[0].replace("*", "_wildcard")
    cert_path = Path(cert or f"{stem}.pem")
    key_path = Path(key or f"{stem}.key")
    ca = Path(ca_dir) if ca_dir else default_ca_dir()
    try:
        make_cert(names, cert_path, key_path, ca, days)
    except (TlsError, OSError) as e:
        print(f"ferryman: {e}", file=sys.stderr)
        return 1
    print(f"certificate {cert_path} (key {key_path}) for {', '.join(names)}")
    print(f"signed by {ca / CA_CERT}: trust that file to trust these certificates")
    return 0


def quick_config(listen: str, targets: list[str]) -> Config:
    servers = []
    for url in targets:
        if not url.startswith("http://"):
            raise ConfigError(f"--to {url}: only http:// upstreams are supported here")
        address = url[len("http://") :].rstrip("/")
        if ":" not in address.rsplit("]", 1)[-1]:
            address += ":80"
        servers.append({"address": address})
    try:
        return Config.model_validate(
            {
                "upstreams": {"backend": {"servers": servers}},
                "servers": [
                    {
                        "listen": [listen],
                        "default": True,
                        "routes": [{"path": "/", "proxy": {"upstream": "backend"}}],
                    }
                ],
            }
        )
    except ValueError as e:
        raise ConfigError(f"invalid arguments: {e}") from None


def serve(config: Config, workers: int | None) -> int:
    from ferryman.observe.errorlog import setup_logging
    from ferryman.server.master import run_master
    from ferryman.server.worker import check_bind, run_worker

    setup_logging(config.log)
    count = workers if workers is not None else config.workers
    if count == "auto":
        count = os.cpu_count() or 1
    check_bind(config)
    if count <= 1:
        return run_worker(config)
    return run_master(config, count)
