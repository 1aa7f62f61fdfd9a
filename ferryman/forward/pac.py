"""The proxy auto-config (PAC) file browsers fetch to learn when to use the proxy."""

from __future__ import annotations

import ipaddress
import json

from ferryman.config.forward import Pac


def _condition(pattern: str) -> str | None:
    """A JavaScript test on ``host`` for one ``direct`` entry; None if PAC cannot say it."""
    try:
        net = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        net = None
    if net is not None:
        if net.version != 4:
            return None  # isInNet() is IPv4 only; isInNetEx() is not widely supported
        return (
            f"isInNet(host, {json.dumps(str(net.network_address))}, {json.dumps(str(net.netmask))})"
        )
    if pattern == "*":
        return "true"
    if pattern.startswith("re:"):
        return f"new RegExp({json.dumps(pattern[3:])}).test(host.toLowerCase())"
    if pattern.startswith("*."):
        return f"dnsDomainIs(host, {json.dumps(pattern[1:])})"
    if pattern.startswith("."):
        return (
            f"(dnsDomainIs(host, {json.dumps(pattern)}) || "
            f"host.toLowerCase() == {json.dumps(pattern[1:])})"
        )
    return f"host.toLowerCase() == {json.dumps(pattern.lower())}"


def pac_script(config: Pac, default_proxy: str) -> str:
    proxy = config.proxy or default_proxy
    lines = [
        "// Proxy auto-config served by Ferryman.",
        "function FindProxyForURL(url, host) {",
    ]
    for pattern in config.direct:
        cond = _condition(pattern)
        if cond is not None:
            lines.append(f'  if ({cond}) return "DIRECT";')
    lines.append(f"  return {json.dumps(proxy)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
