"""The SOCKS5/SOCKS4a machines, as scripted conversations (no sockets)."""

from __future__ import annotations

import struct

import pytest

from ferryman.forward import socks5
from ferryman.forward.socks5 import (
    ClientMachine,
    Connect,
    Credentials,
    Failure,
    Send,
    ServerMachine,
    SocksError,
)


def _auth(user: str, password: str) -> bytes:
    return bytes([1, len(user)]) + user.encode() + bytes([len(password)]) + password.encode()


def _request(atyp_addr: bytes, port: int, cmd: int = 1) -> bytes:
    return bytes([5, cmd, 0]) + atyp_addr + struct.pack("!H", port)


def test_no_auth_domain_connect_with_optimistic_data() -> None:
    m = ServerMachine(auth_required=False)
    [ev] = m.feed(b"\x05\x01\x00")
    assert isinstance(ev, Send) and ev.data == b"\x05\x00"
    name = b"api.example.test"
    [ev] = m.feed(_request(b"\x03" + bytes([len(name)]) + name, 8080) + b"GET / HTTP/1.1\r\n")
    assert isinstance(ev, Connect)
    assert (ev.host, ev.port, ev.remote_dns, ev.version) == ("api.example.test", 8080, True, 5)
    assert m.leftover == b"GET / HTTP/1.1\r\n"
    reply = m.reply(socks5.SUCCEEDED, "127.0.0.1", 40000)
    assert reply == b"\x05\x00\x00\x01" + bytes([127, 0, 0, 1]) + struct.pack("!H", 40000)
    assert m.feed(b"more") == []  # after the reply the bytes belong to the tunnel


def test_byte_at_a_time_with_auth_ipv4_and_ipv6() -> None:
    for addr, host in (
        (b"\x01" + bytes([127, 0, 0, 1]), "127.0.0.1"),
        (b"\x04" + bytes(15) + b"\x01", "::1"),
    ):
        m = ServerMachine(auth_required=True)
        events: list[socks5.Event] = []
        stream = b"\x05\x02\x00\x02" + _auth("alice", "wonderland") + _request(addr, 443)
        for i in range(len(stream)):
            new = m.feed(stream[i : i + 1])
            events += new
            if any(isinstance(e, Credentials) for e in new):
                assert m.auth_reply(True) == b"\x01\x00"
                events += m.feed(b"")
        kinds = [type(e) for e in events]
        assert kinds == [Send, Credentials, Connect]
        assert events[0].data == b"\x05\x02"  # type: ignore[attr-defined]
        cred = events[1]
        assert isinstance(cred, Credentials) and (cred.user, cred.password) == (
            "alice",
            "wonderland",
        )
        conn = events[2]
        assert isinstance(conn, Connect) and (conn.host, conn.port, conn.remote_dns) == (
            host,
            443,
            False,
        )


def test_request_pipelined_with_credentials_waits_for_the_verdict() -> None:
    m = ServerMachine(auth_required=True)
    m.feed(b"\x05\x01\x02")
    events = m.feed(_auth("bob", "x") + _request(b"\x01" + bytes(4), 80))
    assert [type(e) for e in events] == [Credentials]  # the request is held
    assert m.auth_reply(True) == b"\x01\x00"
    [ev] = m.feed(b"")
    assert isinstance(ev, Connect) and ev.host == "0.0.0.0"


def test_wrong_password_closes() -> None:
    m = ServerMachine(auth_required=True)
    m.feed(b"\x05\x01\x02")
    m.feed(_auth("alice", "nope"))
    assert m.auth_reply(False) == b"\x01\x01"
    assert m.feed(_request(b"\x01" + bytes(4), 80)) == []


def test_auth_required_refuses_clients_without_it() -> None:
    m = ServerMachine(auth_required=True)
    [ev] = m.feed(b"\x05\x01\x00")
    assert isinstance(ev, Failure) and ev.data == b"\x05\xff"
    assert m.feed(b"\x05\x01\x00") == []


def test_unsupported_commands_and_address_types() -> None:
    m = ServerMachine(auth_required=False)
    m.feed(b"\x05\x01\x00")
    [ev] = m.feed(_request(b"\x01" + bytes(4), 80, cmd=3))  # UDP ASSOCIATE
    assert isinstance(ev, Failure) and ev.data[:2] == b"\x05\x07"
    m = ServerMachine(auth_required=False)
    m.feed(b"\x05\x01\x00")
    [ev] = m.feed(b"\x05\x01\x00\x09")
    assert isinstance(ev, Failure) and ev.data[:2] == b"\x05\x08"


def test_refusal_reply_codes() -> None:
    for code in (0x02, 0x04, 0x05):
        m = ServerMachine(auth_required=False)
        m.feed(b"\x05\x01\x00")
        m.feed(_request(b"\x01" + bytes([127, 0, 0, 2]), 443))
        assert m.reply(code)[:2] == bytes([5, code])
        with pytest.raises(RuntimeError):
            m.reply(0)


def test_not_socks() -> None:
    [ev] = ServerMachine(auth_required=False).feed(b"GET / HTTP/1.1\r\n")
    assert isinstance(ev, Failure)


def test_socks4a_with_name_and_socks4_refused_when_auth_is_required() -> None:
    m = ServerMachine(auth_required=False)
    msg = b"\x04\x01" + struct.pack("!H", 80) + bytes([0, 0, 0, 1]) + b"carol\0api.example.test\0"
    [ev] = m.feed(msg)
    assert isinstance(ev, Connect)
    assert (ev.host, ev.port, ev.remote_dns, ev.version) == ("api.example.test", 80, True, 4)
    assert m.user == "carol"
    assert m.reply(0) == b"\x00\x5a" + bytes(6)
    m = ServerMachine(auth_required=True)
    [ev] = m.feed(msg)
    assert isinstance(ev, Failure) and ev.data[:2] == b"\x00\x5b"


def test_client_against_server() -> None:
    """The client machine and the server machine talk to each other."""
    server = ServerMachine(auth_required=True)
    client = ClientMachine("api.example.test", 443, "alice", "wonderland")
    to_server = client.start()
    to_client = b""
    done = False
    rest = b""
    for _ in range(10):
        for ev in server.feed(to_server):
            if isinstance(ev, Send):
                to_client += ev.data
            elif isinstance(ev, Credentials):
                to_client += server.auth_reply(ev.password == "wonderland")
                for ev2 in server.feed(b""):
                    assert isinstance(ev2, Connect)
            elif isinstance(ev, Connect):
                assert (ev.host, ev.port) == ("api.example.test", 443)
                to_client += server.reply(0, "::1", 9) + b"early"
        to_server, done, rest = client.feed(to_client)
        to_client = b""
        if done:
            break
    assert done and rest == b"early"


def test_client_sees_refusal_code() -> None:
    client = ClientMachine("internal.example.test", 443)
    assert client.start() == b"\x05\x01\x00"
    out, done, _ = client.feed(b"\x05\x00")
    assert out.startswith(b"\x05\x01\x00\x03") and not done
    with pytest.raises(SocksError) as info:
        client.feed(b"\x05\x02\x00\x01" + bytes(6))
    assert info.value.code == 0x02
    assert "not allowed" in str(info.value)


def test_client_wrong_password() -> None:
    client = ClientMachine("a.test", 80, "alice", "bad")
    assert client.start() == b"\x05\x02\x00\x02"
    out, _, _ = client.feed(b"\x05\x02")
    assert out == b"\x01\x05alice\x03bad"
    with pytest.raises(SocksError, match="credentials"):
        client.feed(b"\x01\x01")


def _connect_name(name: bytes) -> list[socks5.Event]:
    m = ServerMachine(auth_required=False)
    m.feed(b"\x05\x01\x00")
    return m.feed(_request(b"\x03" + bytes([len(name)]) + name, 443))


@pytest.mark.parametrize(
    "name",
    [
        b"a.test\r\nX-Injected: 1",
        b"a.test\nb",
        b"a .test",
        b"a.test:80",
        b"fe80::1%eth0",
        b"a%2e.test",
        b"",
        b"\xff\xfe.test",
        b"a..test",
    ],
)
def test_socks5_names_that_are_not_host_names_are_refused(name: bytes) -> None:
    [ev] = _connect_name(name)
    assert isinstance(ev, Failure)
    assert ev.data[:2] == b"\x05\x08"  # address type not supported


def test_socks4a_names_that_are_not_host_names_are_refused() -> None:
    m = ServerMachine(auth_required=False)
    [ev] = m.feed(b"\x04\x01\x01\xbb\x00\x00\x00\x01user\x00a.test\r\nHost: x\x00")
    assert isinstance(ev, Failure) and ev.data == b"\x00\x5b" + bytes(6)


def test_socks_names_are_compared_in_ascii() -> None:
    # A Unicode name and its punycode spelling are the same destination, as over HTTP.
    for name in ("Bücher.Example.Test".encode(), b"XN--BCHER-KVA.example.test."):
        [ev] = _connect_name(name)
        assert isinstance(ev, Connect) and ev.host == "xn--bcher-kva.example.test"
    [ev] = _connect_name(b"::1")
    assert isinstance(ev, Connect) and ev.host == "::1"
    m = ServerMachine(auth_required=False)
    [ev] = m.feed(b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00" + "bücher.test".encode() + b"\x00")
    assert isinstance(ev, Connect) and ev.host == "xn--bcher-kva.test"


def test_bytes_sent_ahead_while_waiting_are_bounded() -> None:
    m = ServerMachine(auth_required=True)
    m.feed(b"\x05\x01\x02")
    [ev] = m.feed(_auth("alice", "wonderland"))
    assert isinstance(ev, Credentials) and m.waiting
    assert m.feed(b"x" * socks5.MAX_PENDING) == []  # up to the limit: kept
    [ev] = m.feed(b"x")
    assert isinstance(ev, Failure) and "before the handshake finished" in ev.reason
    assert m.leftover == b"" and m.feed(b"more") == []
    # The same while a connect is in progress.
    m = ServerMachine(auth_required=False)
    m.feed(b"\x05\x01\x00")
    [ev] = m.feed(_request(b"\x01" + bytes([127, 0, 0, 1]), 443) + b"y" * 100)
    assert isinstance(ev, Connect) and m.waiting and m.leftover == b"y" * 100
    [ev] = m.feed(b"y" * socks5.MAX_PENDING)
    assert isinstance(ev, Failure)


def test_client_accepts_any_bound_name_in_the_parents_reply() -> None:
    c = ClientMachine("a.test", 443)
    c.start()
    out, done, rest = c.feed(b"\x05\x00")
    assert out.startswith(b"\x05\x01\x00\x03")
    out, done, rest = c.feed(b"\x05\x00\x00\x03\x00\x00\x00data")  # an empty bound name
    assert done and rest == b"data"
