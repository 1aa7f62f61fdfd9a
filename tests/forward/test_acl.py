"""Access rules and the destination address policy, as pure decisions."""

from __future__ import annotations

import ipaddress

import pytest

from ferryman.config.forward import ForwardRule
from ferryman.forward.acl import AccessPolicy, AddressPolicy, DomainSet, Refused, Request


def _req(
    host: str = "api.example.test",
    port: int = 443,
    method: str = "CONNECT",
    user: str = "alice",
    groups: frozenset[str] = frozenset({"staff"}),
    client: str = "127.0.0.1",
) -> Request:
    return Request(ipaddress.ip_address(client), user, groups, host, port, method)


def test_domain_patterns() -> None:
    d = DomainSet(["a.test", ".b.test", "*.c.test", r"re:^ads\d+\."])
    assert d.match("a.test") and d.match("A.TEST.") and not d.match("x.a.test")
    assert d.match("b.test") and d.match("x.b.test") and not d.match("xb.test")
    assert d.match("x.c.test") and not d.match("c.test")
    assert d.match("ads12.example.test") and not d.match("myads1.test")
    assert DomainSet(["*"]).match("anything")
    assert not DomainSet([])


def test_first_matching_rule_decides() -> None:
    policy = AccessPolicy(
        [
            ForwardRule(action="deny", domains=["blocked.example.test"], reason="blocked"),
            ForwardRule(action="allow", groups=["staff"]),
            ForwardRule(action="allow", users=["carol"], ports=["8000-8999"], methods=["get"]),
        ],
        default_allow=False,
        clients=[],
        connect_ports=[443, 563],
    )
    policy.check(_req())
    policy.check(_req(port=563))
    with pytest.raises(Refused, match="blocked") as info:
        policy.check(_req(host="blocked.example.test"))
    assert info.value.status == 403 and info.value.socks_code == 0x02
    with pytest.raises(Refused, match="port 25"):
        policy.check(_req(port=25))
    carol = {"user": "carol", "groups": frozenset[str]()}
    policy.check(_req(port=8080, method="GET", **carol))  # type: ignore[arg-type]
    with pytest.raises(Refused, match="no access rule"):
        policy.check(_req(port=9080, method="GET", **carol))  # type: ignore[arg-type]
    with pytest.raises(Refused):
        policy.check(_req(port=8080, method="POST", **carol))  # type: ignore[arg-type]
    with pytest.raises(Refused):
        policy.check(_req(user="", groups=frozenset()))


def test_client_networks() -> None:
    policy = AccessPolicy(
        [ForwardRule(action="deny", clients=["127.0.0.0/30"])],
        default_allow=True,
        clients=["127.0.0.0/8", "::1"],
        connect_ports=[443],
    )
    assert policy.client_allowed(ipaddress.ip_address("127.0.0.9"))
    assert policy.client_allowed(ipaddress.ip_address("::1"))
    assert not policy.client_allowed(ipaddress.ip_address("192.0.2.1"))
    assert not policy.client_allowed(None)
    with pytest.raises(Refused):
        policy.check(_req(client="127.0.0.2"))
    policy.check(_req(client="127.0.0.9"))


def test_address_policy_refuses_special_ranges_unless_listed() -> None:
    policy = AddressPolicy(["127.0.0.1", "::1"])
    ok = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "93.184.216.34", "2606:4700::1"]
    for a in ok:
        assert policy.check(ipaddress.ip_address(a)) is None, a
    refused = {
        "127.0.0.2": "loopback",
        "::ffff:127.0.0.2": "loopback",
        "10.1.2.3": "private",
        "192.168.1.1": "private",
        "172.16.0.1": "private",
        "169.254.169.254": "link-local",
        "fe80::1": "link-local",
        "224.0.0.1": "multicast",
        "0.0.0.0": "unspecified",
        "fd00::1": "private",
        "100.64.0.1": "shared",
    }
    for a, kind in refused.items():
        reason = policy.check(ipaddress.ip_address(a))
        assert reason is not None and kind in reason, a


def test_address_filter_keeps_order_and_says_why() -> None:
    policy = AddressPolicy(["127.0.0.1"])
    addrs = [ipaddress.ip_address(a) for a in ("127.0.0.2", "127.0.0.1", "10.0.0.1")]
    kept, why = policy.filter(addrs)
    assert kept == [ipaddress.ip_address("127.0.0.1")]
    assert why == "127.0.0.2 is a loopback address"
    assert policy.filter(addrs[:1])[0] == []


def test_more_special_ranges_are_refused() -> None:
    policy = AddressPolicy([])
    for a, kind in {
        "192.0.0.8": "IETF",
        "100.64.0.1": "CGNAT",
        "fec0::1": "site-local",
        "2002:7f00:1::1": "6to4",  # carries 127.0.0.1
        "2002:a00:1::": "6to4",
    }.items():
        reason = policy.check(ipaddress.ip_address(a))
        # Python releases differ on which of these they call private already.
        assert reason is not None and (kind in reason or "private" in reason), (a, reason)


def test_connect_ports_apply_to_socks_connects_too() -> None:
    policy = AccessPolicy([], default_allow=True, clients=[], connect_ports=[443])
    policy.check(_req(port=443, method="SOCKS"))
    with pytest.raises(Refused, match="SOCKS connect to port 25") as info:
        policy.check(_req(port=25, method="SOCKS"))
    assert info.value.socks_code == 0x02
    policy.check(_req(port=8080, method="GET"))  # plain HTTP: the rules' ports decide


def _at(req: Request, addr: str) -> Request:
    return req.at(ipaddress.ip_address(addr))


def test_destinations_are_checked_on_the_address_connected_to() -> None:
    policy = AccessPolicy(
        [
            ForwardRule(action="deny", destinations=["127.0.0.0/8"], reason="no loopback"),
            ForwardRule(action="allow", destinations=["10.1.2.0/24"], users=["alice"]),
            ForwardRule(action="allow", domains=[".example.test"]),
        ],
        default_allow=False,
        clients=[],
        connect_ports=[443],
    )
    req = _req(host="anything.test")
    # Before resolution the first rule that could match needs the address: undecided.
    assert policy.check(req, final=False) is False
    for spelling in ("127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1"):
        with pytest.raises(Refused, match="no loopback"):
            policy.check(_at(req, spelling))
    assert policy.check(_at(req, "10.1.2.3"))
    with pytest.raises(Refused, match="no access rule"):
        policy.check(_at(req, "10.1.3.3"))
    with pytest.raises(Refused, match="no access rule"):
        policy.check(_at(_req(host="anything.test", user="bob"), "10.1.2.3"))
    # Through a parent the address is never known here: destinations do not match.
    with pytest.raises(Refused, match="no access rule"):
        policy.check(req, final=True)
    assert policy.check(_req(host="www.example.test"), final=True)
    assert policy.uses_destinations
    assert not AccessPolicy([], True, [], [443]).uses_destinations
