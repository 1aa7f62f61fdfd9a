"""The ``forward:`` section: safety checks at load time, with file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryman.build import BuildError, Runtime
from ferryman.config.loader import ConfigError, load_config, parse_config
from ferryman.forward.pac import pac_script

ROOT = Path(__file__).resolve().parents[2]


def test_example_loads() -> None:
    config = load_config(ROOT / "examples" / "forward.yaml")
    assert config.forward is not None
    assert config.forward.connect_ports == [443]
    assert config.forward.auth is not None and config.forward.auth.htpasswd is not None
    assert Path(config.forward.auth.htpasswd).is_file()  # read beside the config
    runtime = Runtime(config)
    assert runtime.forward is not None
    assert runtime.forward.http_for("127.0.0.1:3128") is runtime.forward.http
    assert "127.0.0.1:3128" in runtime.hosts


def test_open_proxy_is_refused() -> None:
    text = "forward:\n  listen: ['127.0.0.1:3128']\n  socks5_listen: ['0.0.0.0:1080']\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    msg = str(info.value)
    assert msg.startswith("f.yaml:3: forward.socks5_listen.0:")
    assert "open proxy" in msg and "allow_open_proxy" in msg
    # Loopback only, client networks, auth, or the explicit flag: each is accepted.
    parse_config("forward:\n  listen: ['[::1]:3128', 'localhost:3129']\n")
    parse_config("forward:\n  listen: ['0.0.0.0:3128']\n  clients: [10.0.0.0/8]\n")
    parse_config("forward:\n  listen: ['0.0.0.0:3128']\n  allow_open_proxy: true\n")


def test_bad_values_point_at_their_line(tmp_path: Path) -> None:
    cases = {
        "  hosts: {'a.test': [not-an-ip]}\n": "forward.hosts",
        "  chain: [{match: ['*.x'], via: 'ftp://p:1'}]\n": "forward.chain.0.via",
        "  rules: [{action: allow, ports: ['9-1']}]\n": "forward.rules.0.ports",
        "  rules: [{action: allow, domains: ['re:(']}]\n": "forward.rules.0.domains",
        "  auth: {htpasswd: missing-file}\n": "forward.auth.htpasswd",
        "  allow_destinations: [10.0.0.0/33]\n": "forward.allow_destinations",
    }
    for line, key in cases.items():
        text = "forward:\n  listen: ['127.0.0.1:3128']\n" + line
        with pytest.raises(ConfigError) as info:
            parse_config(text, str(tmp_path / "f.yaml"))
        assert f"f.yaml:3: {key}" in str(info.value), (line, str(info.value))


def test_weak_hash_in_config_is_a_build_error() -> None:
    config = parse_config(
        "forward:\n  listen: ['127.0.0.1:3128']\n"
        "  auth: {users: {alice: {password: 'plain-text'}}}\n"
    )
    with pytest.raises(BuildError, match="unsupported password hash"):
        Runtime(config)


def test_pac_script() -> None:
    config = parse_config(
        "forward:\n  listen: ['127.0.0.1:3128']\n"
        "  pac: {direct: [a.test, .b.test, '*.c.test', '10.0.0.0/8', '::1/128', 're:^x']}\n"
    )
    assert config.forward is not None and config.forward.pac is not None
    script = pac_script(config.forward.pac, "PROXY 127.0.0.1:3128")
    assert script.startswith("// Proxy auto-config")
    assert 'host.toLowerCase() == "a.test"' in script
    assert 'dnsDomainIs(host, ".b.test")' in script
    assert 'dnsDomainIs(host, ".c.test")' in script
    assert 'isInNet(host, "10.0.0.0", "255.0.0.0")' in script
    assert "::1" not in script
    assert 'new RegExp("^x")' in script
    assert script.rstrip().endswith('return "PROXY 127.0.0.1:3128";\n}')


def test_idn_names_in_the_config_are_kept_in_ascii() -> None:
    config = parse_config(
        "forward:\n  listen: ['127.0.0.1:3128']\n"
        "  hosts: {'Bücher.test': [127.0.0.1], '*.Straße.test': ['::1']}\n"
        "  rules: [{action: deny, domains: ['.bücher.test', '*.STRASSE.test', 'XN--X.test']}]\n"
        "  chain: [{match: ['bücher.test'], via: direct}]\n"
    )
    fwd = config.forward
    assert fwd is not None
    assert list(fwd.hosts) == ["xn--bcher-kva.test", "*.strasse.test"]
    assert fwd.rules[0].domains == [".xn--bcher-kva.test", "*.strasse.test", "xn--x.test"]
    assert fwd.chain[0].match == ["xn--bcher-kva.test"]


@pytest.mark.parametrize(
    "pattern", ["127.0.0.1", "127.1", "2130706433", "0x7f.1", "::1", "[::ffff:127.0.0.1]"]
)
def test_ip_addresses_are_not_domain_patterns(pattern: str) -> None:
    rule = f"  rules: [{{action: deny, domains: ['{pattern}']}}]\n"
    text = "forward:\n  listen: ['127.0.0.1:3128']\n" + rule
    with pytest.raises(ConfigError, match="destinations") as info:
        parse_config(text, "f.yaml")
    assert "f.yaml:3: forward.rules.0.domains" in str(info.value)


def test_defaults_deny_and_destinations_parse() -> None:
    config = parse_config(
        "forward:\n  listen: ['127.0.0.1:3128']\n"
        "  rules: [{action: deny, destinations: [10.0.0.0/8, '::1']}]\n"
    )
    assert config.forward is not None
    assert config.forward.default_action == "deny"  # as Squid: what no rule allows is refused
    assert config.forward.rules[0].destinations == ["10.0.0.0/8", "::1"]
    with pytest.raises(ConfigError, match="destinations"):
        parse_config(
            "forward:\n  listen: ['127.0.0.1:3128']\n"
            "  rules: [{action: deny, destinations: [not-a-net]}]\n"
        )


def test_pac_direct_names_in_ascii() -> None:
    config = parse_config(
        "forward:\n  listen: ['127.0.0.1:3128']\n  pac: {direct: ['.bücher.test', 10.0.0.0/8]}\n"
    )
    assert config.forward is not None and config.forward.pac is not None
    assert config.forward.pac.direct == [".xn--bcher-kva.test", "10.0.0.0/8"]
