"""SOCKS5 (RFC 1928) with username/password (RFC 1929), and SOCKS4/4a, without I/O.

Theory of operation. :class:`ServerMachine` is fed the bytes a client sends and returns
events; :class:`ClientMachine` is the other end, used to chain through a parent SOCKS5
proxy. Neither touches a socket: the asyncio protocol that owns the connection
(``socks_server.py``) writes what they return and acts on their events. Invariants:

- The server answers at most one request per connection; bytes the client sends after its
  request (optimistic data) are kept in :attr:`ServerMachine.leftover` for the tunnel.
- While the machine waits for :meth:`~ServerMachine.auth_reply` or
  :meth:`~ServerMachine.reply` (:attr:`~ServerMachine.waiting`), at most
  :data:`MAX_PENDING` bytes are kept; the connection should stop reading meanwhile.
- Any malformed input ends in a :class:`Failure` event carrying the last bytes to send (a
  "no acceptable method" or "general failure" reply where the protocol has one), after
  which the machine accepts nothing more.
- Authentication is never skipped: when ``auth_required`` the only method offered back is
  username/password, and SOCKS4 (which has no passwords) is refused.

Server state table (``feed`` moves along it; the ``reply_*`` methods close the waits)::

    GREETING --v5, methods ok--> AUTH (0x02) or REQUEST (0x00)
    GREETING --v4/v4a CONNECT--> WAIT_REPLY
    AUTH --credentials--> WAIT_AUTH --auth_reply(ok)--> REQUEST | CLOSED
    REQUEST --CONNECT--> WAIT_REPLY --reply(code)--> DONE | CLOSED
"""

from __future__ import annotations

import ipaddress
import struct

from ferryman.config.forward import target_host

VERSION = 5
NO_AUTH = 0x00
USER_PASS = 0x02
NO_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_NOT_SUPPORTED = 0x08

REPLY_TEXT = {
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}

GREETING, AUTH, WAIT_AUTH, REQUEST, WAIT_REPLY, DONE, CLOSED = range(7)

# Bytes a client may send ahead while its credentials are checked or its connection is
# opened (optimistic data such as a TLS ClientHello); more fails the handshake.
MAX_PENDING = 8192


class Event:
    __slots__ = ()


class Send(Event):
    """Bytes to write to the peer; the machine goes on."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class Credentials(Event):
    """Check these, then call :meth:`ServerMachine.auth_reply`."""

    __slots__ = ("password", "user")

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password


class Connect(Event):
    """Open a connection to ``host:port``, then call :meth:`ServerMachine.reply`.
    ``remote_dns`` is true when the client sent a name (``socks5h://``, SOCKS4a)."""

    __slots__ = ("host", "port", "remote_dns", "version")

    def __init__(self, host: str, port: int, remote_dns: bool, version: int) -> None:
        self.host = host
        self.port = port
        self.remote_dns = remote_dns
        self.version = version


class Failure(Event):
    """A protocol error: write ``data`` (maybe empty), then close."""

    __slots__ = ("data", "reason")

    def __init__(self, reason: str, data: bytes = b"") -> None:
        self.reason = reason
        self.data = data


def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port as in a SOCKS5 request or reply."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) < 256:
            raise ValueError("a SOCKS5 domain name is 1-255 bytes") from None
        return bytes([ATYP_DOMAIN, len(name)]) + name + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([atyp]) + ip.packed + struct.pack("!H", port)


def _name(raw: bytes) -> str:
    """A destination name sent by a client, in the spelling HTTP uses (ASCII, punycode,
    lower case); ValueError unless it is a valid host name or IP address."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a domain name that does not decode") from None
    host = target_host(text)
    if host is None:
        raise ValueError("not a host name")
    return host


def _decode_address(
    buf: bytes | bytearray, at: int, check_name: bool = True
) -> tuple[str, int, bool, int] | None:
    """(host, port, is_name, end) of the address at ``buf[at]``; None if incomplete.
    Raises ValueError for an unknown address type or (``check_name``) a bad name. A
    parent's reply is read with ``check_name`` false: its bound address is not used."""
    if len(buf) <= at:
        return None
    atyp = buf[at]
    if atyp == ATYP_IPV4:
        end = at + 1 + 4 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[at + 1 : at + 5])))
        is_name = False
    elif atyp == ATYP_IPV6:
        end = at + 1 + 16 + 2
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[at + 1 : at + 17])))
        is_name = False
    elif atyp == ATYP_DOMAIN:
        if len(buf) < at + 2:
            return None
        n = buf[at + 1]
        end = at + 2 + n + 2
        if len(buf) < end:
            return None
        raw = bytes(buf[at + 2 : at + 2 + n])
        host = _name(raw) if check_name else raw.decode("latin-1")
        is_name = True
    else:
        raise ValueError(f"address type {atyp}")
    (port,) = struct.unpack("!H", bytes(buf[end - 2 : end]))
    return host, port, is_name, end


class ServerMachine:
    __slots__ = ("_buf", "auth_required", "method", "state", "user", "version")

    def __init__(self, auth_required: bool) -> None:
        self.auth_required = auth_required
        self.state = GREETING
        self._buf = bytearray()
        self.method = NO_ACCEPTABLE
        self.version = 0
        self.user = ""

    @property
    def leftover(self) -> bytes:
        """Bytes received after the request, for the tunnel."""
        return bytes(self._buf)

    @property
    def waiting(self) -> bool:
        """True while an answer (credentials, connect) is awaited: stop reading."""
        return self.state in (WAIT_AUTH, WAIT_REPLY)

    def feed(self, data: bytes) -> list[Event]:
        if self.state in (CLOSED, DONE):
            return []
        self._buf += data
        if self.waiting and len(self._buf) > MAX_PENDING:
            self.state = CLOSED
            self._buf.clear()
            return [Failure(f"more than {MAX_PENDING} bytes sent before the handshake finished")]
        events: list[Event] = []
        while self.state in (GREETING, AUTH, REQUEST):
            before = self.state
            event = self._step()
            if event is not None:
                events.append(event)
                if isinstance(event, Failure):
                    self.state = CLOSED
                    break
            if self.state == before and event is None:
                break  # needs more bytes
        return events

    def _step(self) -> Event | None:
        buf = self._buf
        if self.state == GREETING:
            if not buf:
                return None
            if buf[0] == 4:
                return self._socks4()
            if buf[0] != VERSION:
                return Failure(f"not a SOCKS request (first byte {buf[0]})")
            if len(buf) < 2 or len(buf) < 2 + buf[1]:
                return None
            methods = bytes(buf[2 : 2 + buf[1]])
            del buf[: 2 + len(methods)]
            self.version = 5
            wanted = USER_PASS if self.auth_required else NO_AUTH
            if wanted not in methods:
                need = "username/password" if self.auth_required else "no-authentication"
                return Failure(f"the client does not offer {need}", bytes([VERSION, NO_ACCEPTABLE]))
            self.method = wanted
            self.state = AUTH if wanted == USER_PASS else REQUEST
            return Send(bytes([VERSION, wanted]))
        if self.state == AUTH:
            # RFC 1929: VER=1 ULEN UNAME PLEN PASSWD
            if len(buf) < 2:
                return None
            if buf[0] != 1:
                return Failure("bad username/password version", b"\x01\x01")
            ulen = buf[1]
            if len(buf) < 2 + ulen + 1:
                return None
            plen = buf[2 + ulen]
            end = 3 + ulen + plen
            if len(buf) < end:
                return None
            user = bytes(buf[2 : 2 + ulen]).decode("utf-8", "replace")
            password = bytes(buf[3 + ulen : end]).decode("utf-8", "replace")
            del buf[:end]
            self.state = WAIT_AUTH
            return Credentials(user, password)
        # REQUEST: VER CMD RSV ATYP DST.ADDR DST.PORT
        if len(buf) < 4:
            return None
        if buf[0] != VERSION:
            return Failure("bad request version", self._reply_bytes(GENERAL_FAILURE))
        cmd = buf[1]
        try:
            decoded = _decode_address(buf, 3)
        except ValueError as e:
            return Failure(f"bad address: {e}", self._reply_bytes(ADDRESS_NOT_SUPPORTED))
        if decoded is None:
            return None
        host, port, is_name, end = decoded
        del buf[:end]
        if cmd != CMD_CONNECT:
            name = {2: "BIND", 3: "UDP ASSOCIATE"}.get(cmd, str(cmd))
            return Failure(
                f"command {name} not supported", self._reply_bytes(COMMAND_NOT_SUPPORTED)
            )
        self.state = WAIT_REPLY
        return Connect(host, port, is_name, 5)

    def _socks4(self) -> Event | None:
        # VN=4 CD DSTPORT(2) DSTIP(4) USERID NUL [HOST NUL]  (SOCKS4a when DSTIP is 0.0.0.x)
        buf = self._buf
        if self.auth_required:
            return Failure("SOCKS4 has no passwords and this proxy requires them", _S4_REJECT)
        if len(buf) < 9:
            return None
        nul = buf.find(b"\0", 8)
        if nul < 0:
            return None if len(buf) < 1024 else Failure("SOCKS4 user id too long", _S4_REJECT)
        cd = buf[1]
        (port,) = struct.unpack("!H", bytes(buf[2:4]))
        ip = bytes(buf[4:8])
        end = nul + 1
        if ip[:3] == b"\0\0\0" and ip[3] != 0:
            host_end = buf.find(b"\0", end)
            if host_end < 0:
                return None if len(buf) < 1024 else Failure("SOCKS4a name too long", _S4_REJECT)
            try:
                host = _name(bytes(buf[end:host_end]))
            except ValueError:
                return Failure("SOCKS4a name is not a host name", _S4_REJECT)
            end = host_end + 1
            is_name = True
        else:
            host = str(ipaddress.IPv4Address(ip))
            is_name = False
        self.user = bytes(buf[8:nul]).decode("utf-8", "replace")
        del buf[:end]
        self.version = 4
        if cd != CMD_CONNECT:
            return Failure("SOCKS4 BIND not supported", _S4_REJECT)
        self.state = WAIT_REPLY
        return Connect(host, port, is_name, 4)

    def auth_reply(self, ok: bool) -> bytes:
        """The RFC 1929 status to send; on failure the connection must be closed after it."""
        if self.state != WAIT_AUTH:
            raise RuntimeError("no credentials are waiting for an answer")
        self.state = REQUEST if ok else CLOSED
        return b"\x01\x00" if ok else b"\x01\x01"

    def reply(self, code: int, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
        """The reply to the request; ``code`` 0 opens the tunnel, anything else closes."""
        if self.state != WAIT_REPLY:
            raise RuntimeError("no request is waiting for a reply")
        self.state = DONE if code == SUCCEEDED else CLOSED
        if self.version == 4:
            return b"\0\x5a" + bytes(6) if code == SUCCEEDED else _S4_REJECT
        return self._reply_bytes(code, bind_host, bind_port)

    @staticmethod
    def _reply_bytes(code: int, bind_host: str = "0.0.0.0", bind_port: int = 0) -> bytes:
        return bytes([VERSION, code, 0]) + encode_address(bind_host, bind_port)


_S4_REJECT = b"\0\x5b" + bytes(6)


class SocksError(Exception):
    def __init__(self, reason: str, code: int = GENERAL_FAILURE) -> None:
        super().__init__(reason)
        self.code = code


class ClientMachine:
    """The client side of one SOCKS5 CONNECT: :meth:`start`, then :meth:`feed` replies
    until it returns ``done``; raises :class:`SocksError` when the server refuses."""

    __slots__ = ("_buf", "_host", "_password", "_port", "_state", "_user")

    def __init__(self, host: str, port: int, user: str = "", password: str = "") -> None:
        self._host = host
        self._port = port
        self._user = user
        self._password = password
        self._buf = bytearray()
        self._state = GREETING

    def start(self) -> bytes:
        methods = bytes([NO_AUTH, USER_PASS]) if self._user else bytes([NO_AUTH])
        return bytes([VERSION, len(methods)]) + methods

    def _request(self) -> bytes:
        return bytes([VERSION, CMD_CONNECT, 0]) + encode_address(self._host, self._port)

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        """(bytes to send, whether the tunnel is open, bytes after the reply)."""
        self._buf += data
        out = b""
        buf = self._buf
        while True:
            if self._state == GREETING:
                if len(buf) < 2:
                    return out, False, b""
                if buf[0] != VERSION:
                    raise SocksError("the parent is not a SOCKS5 server")
                method = buf[1]
                del buf[:2]
                if method == USER_PASS and self._user:
                    u = self._user.encode()
                    p = self._password.encode()
                    out += bytes([1, len(u)]) + u + bytes([len(p)]) + p
                    self._state = AUTH
                elif method == NO_AUTH:
                    out += self._request()
                    self._state = REQUEST
                else:
                    raise SocksError("the parent SOCKS5 proxy accepts none of our methods")
            elif self._state == AUTH:
                if len(buf) < 2:
                    return out, False, b""
                if buf[1] != 0:
                    raise SocksError("the parent SOCKS5 proxy refused our credentials")
                del buf[:2]
                out += self._request()
                self._state = REQUEST
            else:
                if len(buf) < 4:
                    return out, False, b""
                try:
                    decoded = _decode_address(buf, 3, check_name=False)
                except ValueError:
                    raise SocksError("bad reply from the parent SOCKS5 proxy") from None
                if decoded is None:
                    return out, False, b""
                code = buf[1]
                if code != SUCCEEDED:
                    text = REPLY_TEXT.get(code, f"code {code}")
                    raise SocksError(f"parent SOCKS5 proxy: {text}", code)
                end = decoded[3]
                rest = bytes(buf[end:])
                buf.clear()
                self._state = DONE
                return out, True, rest
