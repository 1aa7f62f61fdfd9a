"""Read a YAML file into a :class:`Config`, with errors that name the file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ferryman.config.schema import Config, LocatedError


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` is the message for the operator."""


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(text, str(path))


def parse_config(text: str, name: str = "<config>") -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if node is None:
        raise ConfigError(f"{name}: the file is empty")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{name}:{node.start_mark.line + 1}: the top level must be a mapping")
    try:
        # Relative file paths in the config (htpasswd, ...) are read beside it.
        base = str(Path(name).resolve().parent) if name != "<config>" else None
        return Config.model_validate(data, context={"config_dir": base})
    except ValidationError as e:
        raise ConfigError(_describe(e, node, name)) from None


def _describe(error: ValidationError, root: yaml.Node, name: str) -> str:
    lines = []
    for err in error.errors(include_url=False):
        loc: tuple[str | int, ...] = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, LocatedError):
            loc = loc + cause.loc
            message = str(cause)
        else:
            message = err["msg"].removeprefix("Value error, ")
        loc = tuple(p for p in loc if not (isinstance(p, str) and "[" in p))
        node, _found = _find(root, loc)
        line = node.start_mark.line + 1
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
            key = ".".join(str(p) for p in loc)
        lines.append(f"{name}:{line}: {key}: {message}")
    return "\n".join(lines)


def _find(node: yaml.Node, loc: tuple[str | int, ...]) -> tuple[yaml.Node, bool]:
    """The deepest node along ``loc``; a mapping key's node when the key itself is the problem."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    node = value_node
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node, False
            node = node.value[part]
        else:
            return node, False
    return node, True


def summary(config: Config) -> str:
    """What ``ferryman check`` prints for a valid file."""
    out: list[str] = []
    for server in config.servers:
        names = ", ".join(server.server_names) or "(any host)"
        out.append(f"server {names} on {', '.join(server.listen)}: {len(server.routes)} routes")
        for route in server.routes:
            target: Any = route.proxy or route.respond or route.redirect
            if route.proxy is not None:
                what = f"proxy -> {route.proxy.upstream or route.proxy.url}"
            elif route.respond is not None:
                what = f"respond {route.respond.status}"
            elif route.static is not None:
                what = f"static {route.static.root or route.static.alias}"
            else:
                what = f"redirect {target.status} -> {target.to}"
            out.append(f"  {route.match:6} {route.path:24} {what}")
    for upname, up in config.upstreams.items():
        peers = ", ".join(
            s.address + (" backup" if s.backup else f" w={s.weight}") for s in up.servers
        )
        out.append(f"upstream {upname} ({up.balance}): {peers}")
    fwd = config.forward
    if fwd is not None:
        where = ", ".join([*fwd.listen, *(f"{a} (SOCKS5)" for a in fwd.socks5_listen)])
        auth = "auth" if fwd.auth is not None else "no auth"
        out.append(
            f"forward proxy on {where}: {auth}, {len(fwd.rules)} rules, CONNECT ports "
            f"{', '.join(map(str, fwd.connect_ports))}, {len(fwd.chain)} chain rules"
        )
    return "\n".join(out)
