"""Request targets of forward-proxy requests: CONNECT authorities and absolute URLs."""

from __future__ import annotations

import pytest

from ferryman.forward.acl import Refused
from ferryman.forward.http import parse_absolute, parse_authority


def test_connect_authorities() -> None:
    assert parse_authority(b"API.Example.Test.:443") == ("api.example.test", 443)
    assert parse_authority(b"[::1]:8443") == ("::1", 8443)
    assert parse_authority(b"127.0.0.1:80") == ("127.0.0.1", 80)
    for bad in (b"a..b:443", b"x y:1", b"-a.test:1", b"a.test:0", b"a.test:99999", b"a.test"):
        with pytest.raises(Refused) as info:
            parse_authority(bad)
        assert info.value.status == 400, bad


def test_absolute_urls() -> None:
    assert parse_absolute(b"http://a.test/x?y=1") == ("a.test", 80, b"/x?y=1")
    assert parse_absolute(b"HTTP://user:pw@A.test:8080?q") == ("a.test", 8080, b"/?q")
    assert parse_absolute(b"http://[::1]:81") == ("::1", 81, b"/")
    with pytest.raises(Refused, match="CONNECT"):
        parse_absolute(b"https://a.test/")
    with pytest.raises(Refused, match="not an http"):
        parse_absolute(b"ftp://a.test/")


def test_zone_ids_and_odd_ipv6_spellings() -> None:
    assert parse_authority(b"[0:0:0:0:0:0:0:1]:443") == ("::1", 443)
    for bad in (b"[fe80::1%25eth0]:443", b"[fe80::1%eth0]:443", b"[::1%1]:80"):
        with pytest.raises(Refused) as info:
            parse_authority(bad)
        assert info.value.status == 400, bad
    with pytest.raises(Refused):
        parse_absolute(b"http://[fe80::1%25lo]/")


def test_authorities_are_read_as_listen_addresses_are() -> None:
    # An IPv6 address needs its brackets: 2001:db8::1:443 is also an address on its own.
    for bad in (b"2001:db8::1:443", b"::1:80", b":443", b"[]:443", b"a.test:+443", b"a.test:8_0"):
        with pytest.raises(Refused) as info:
            parse_authority(bad)
        assert info.value.status == 400, bad
    with pytest.raises(Refused, match="CONNECT needs host:port"):
        parse_authority(b"a.test:")
    assert parse_authority(b"a.test:", 80) == ("a.test", 80)
    assert parse_authority(b"[::1]", 80) == ("::1", 80)
