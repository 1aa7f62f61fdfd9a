"""What the schema modules share: the frozen model base, durations and sizes, addresses."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from ferryman.config.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_hostport(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``127.0.0.1:80``, ``[::1]:80``, ``localhost:80`` or ``:80`` into (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"{value!r}: unclosed '[' in IPv6 address")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_s = value.partition(":")
    elif value.count(":") > 1:
        raise ValueError(f"{value!r}: write IPv6 addresses as [addr]:port")
    else:
        host, port_s = value, ""
    if not port_s:
        if default_port is None:
            raise ValueError(f"{value!r} needs a port, such as 127.0.0.1:8080")
        port = default_port
    else:
        try:
            port = int(port_s)
        except ValueError:
            raise ValueError(f"{value!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return host or "0.0.0.0", port


def beside_config(path: str | None, info: ValidationInfo) -> str | None:
    """A relative file or directory is read beside the config file, as nginx reads paths
    beside its prefix, so a config means the same whatever the working directory."""
    base = (info.context or {}).get("config_dir")
    if path is not None and base and not os.path.isabs(path):
        return os.path.join(base, path)
    return path
