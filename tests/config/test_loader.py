"""Config errors name the file, line and key; valid files become frozen models."""

from __future__ import annotations

import pytest

from ferryman.config import ConfigError, parse_config
from ferryman.config.units import parse_duration, parse_size


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    return str(info.value)


def test_units() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("10m") == 600
    assert parse_duration("24h") == 86400
    assert parse_duration(5) == 5
    assert parse_size("4k") == 4096
    assert parse_size("10m") == 10 << 20
    assert parse_size("1g") == 1 << 30
    for bad in ("10q", "-1", "", "1.5k"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_unknown_key_names_line() -> None:
    assert (
        error("workers: 1\nlimits:\n  max_body: 1m\n") == "f.yaml:3: limits.max_body: unknown key"
    )


def test_bad_value_names_line_and_key() -> None:
    text = "upstreams:\n  a:\n    servers:\n      - address: 127.0.0.1:1\n        weight: 0\n"
    msg = error(text)
    assert msg.startswith("f.yaml:5: upstreams.a.servers.0.weight:")


def test_unknown_upstream_reference() -> None:
    text = (
        "servers:\n  - listen: ['127.0.0.1:1']\n    routes:\n      - path: /\n"
        "        proxy: {upstream: nope}\n"
    )
    assert error(text) == "f.yaml:5: servers.0.routes.0.proxy.upstream: unknown upstream 'nope'"


def test_route_needs_one_handler() -> None:
    text = "servers:\n  - listen: ['127.0.0.1:1']\n    routes:\n      - path: /\n"
    assert "exactly one handler" in error(text)


def test_invalid_yaml() -> None:
    assert error("a: [1,\n").startswith("f.yaml:2: invalid YAML")


def test_models_are_frozen() -> None:
    config = parse_config("workers: 2\n")
    with pytest.raises(ValueError):
        config.workers = 3  # type: ignore[misc]
