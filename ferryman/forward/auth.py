"""Proxy authentication: users from an htpasswd file or the config, Basic credentials.

Hashes are bcrypt (``$2a$``/``$2b$``/``$2y$``, checked by the ``bcrypt`` package) or
SHA-crypt (``$5$``/``$6$``, :mod:`ferryman.forward.shacrypt`). Checking one costs
milliseconds (SHA-crypt) to a quarter second (bcrypt), and clients send their credentials
with every request, so a successful check is remembered for ``cache_ttl`` as an HMAC of the
password under a key made at start-up; a later request is compared against it in constant
time and costs microseconds. Checks run in a thread so the event loop never waits on bcrypt.

An unknown user is checked against a dummy hash of the same kind and cost as the costliest
configured one, so timing does not tell which names exist. Names and passwords longer than
:data:`MAX_CREDENTIAL` bytes are refused before any hashing (SHA-crypt's work grows with
the square of the password's length). The htpasswd file is read again when its
modification time changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Mapping

import bcrypt

from ferryman.config.forward import ForwardAuth
from ferryman.forward import shacrypt

_SUPPORTED = ("$2a$", "$2b$", "$2y$", "$5$", "$6$")
_RECHECK_FILE = 2.0  # seconds between stat() calls on the htpasswd file
MAX_CREDENTIAL = 256  # bytes of a user name or password; longer ones fail without a check


class AuthConfigError(ValueError):
    pass


def parse_basic(value: bytes | None) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` into (user, password); None if absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def check_hash(hashed: str, where: str) -> None:
    if not hashed.startswith(_SUPPORTED):
        raise AuthConfigError(
            f"{where}: unsupported password hash; use bcrypt (htpasswd -B) or "
            "SHA-crypt ($5$/$6$, as openssl passwd -5/-6 makes)"
        )


def read_htpasswd(path: str) -> dict[str, str]:
    users: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise AuthConfigError(f"{path}: cannot read: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise AuthConfigError(f"{path}:{n}: expected user:hash")
        check_hash(hashed, f"{path}:{n}")
        users[user] = hashed
    return users


def too_long(value: str) -> bool:
    return len(value) > MAX_CREDENTIAL or len(value.encode("utf-8")) > MAX_CREDENTIAL


def verify_hash(password: str, hashed: str) -> bool:
    """Constant-time check of ``password`` against one supported hash."""
    secret = password.encode("utf-8")
    if hashed.startswith("$2"):
        try:
            return bcrypt.checkpw(secret[:72], hashed.encode("ascii"))
        except ValueError:
            return False
    return shacrypt.verify(secret, hashed)


_DUMMY_SECRET = b"ferryman-dummy"


def _cost(hashed: str) -> tuple[float, str]:
    """A rough cost (in SHA-512-round units) of checking ``hashed``, and its kind."""
    if hashed.startswith("$2"):
        try:
            rounds = int(hashed[4:6])
        except ValueError:
            rounds = 10
        # bcrypt cost 10 takes about as long as 100,000 rounds of SHA-512 crypt here.
        return 100.0 * 2**rounds, f"$2b${rounds:02d}"
    rounds = shacrypt.ROUNDS_DEFAULT
    rest = hashed[3:]
    if rest.startswith("rounds="):
        spec = rest[7:].partition("$")[0]
        if spec.isdigit():
            rounds = min(max(int(spec), 1000), 999_999_999)
    return float(rounds), f"{hashed[:3]}rounds={rounds}$"


def dummy_kind(hashes: list[str]) -> str:
    """The kind and cost (``$2b$12``, ``$6$rounds=5000$``) of the costliest of ``hashes``."""
    return max(_cost(h) for h in hashes)[1] if hashes else "$2b$10"


def dummy_hash(kind: str) -> str:
    """A hash of ``kind`` (as :func:`dummy_kind` says) for checking unknown users against."""
    if kind.startswith("$2"):
        return bcrypt.hashpw(_DUMMY_SECRET, bcrypt.gensalt(rounds=int(kind[4:6]))).decode()
    salt = base64.b64encode(os.urandom(12), b"./").decode()
    return shacrypt.sha_crypt(_DUMMY_SECRET, f"{kind}{salt}")


class Authenticator:
    def __init__(self, config: ForwardAuth) -> None:
        self.challenge = b'Basic realm="%s", charset="UTF-8"' % config.realm.encode("latin-1")
        self._path = config.htpasswd
        self._config_users = {name: u.password for name, u in config.users.items()}
        for name, h in self._config_users.items():
            check_hash(h, f"forward.auth.users.{name}")
        self._mtime = 0.0
        self._checked = 0.0
        self._file_users: dict[str, str] = {}
        if self._path is not None:
            self._mtime = os.stat(self._path).st_mtime
            self._file_users = read_htpasswd(self._path)
        groups: dict[str, set[str]] = {}
        for name, u in config.users.items():
            for g in u.groups:
                groups.setdefault(name, set()).add(g)
        for g, members in config.groups.items():
            for name in members:
                groups.setdefault(name, set()).add(g)
        self._groups = {name: frozenset(gs) for name, gs in groups.items()}
        self._ttl = config.cache_ttl
        self._key = os.urandom(32)
        self._cache: dict[str, tuple[bytes, float]] = {}
        self._checks = asyncio.Semaphore(4)  # bounds the CPU a flood of bad passwords takes
        self._users: dict[str, str] = {}
        self._dummy = ""
        self._dummy_kind = ""
        self._merge()  # the dummy made now, so the first unknown user takes no longer

    def groups(self, user: str) -> frozenset[str]:
        return self._groups.get(user, frozenset())

    @property
    def users(self) -> Mapping[str, str]:
        self._reload_if_changed()
        return self._users

    def _merge(self) -> None:
        """The users of the file and the config (the config's win), and the hash an unknown
        user's password is checked against: the kind and cost of the costliest configured
        hash (made again when that changes). Done at start and when the file changes."""
        self._users = {**self._file_users, **self._config_users}
        kind = dummy_kind(list(self._users.values()))
        if kind != self._dummy_kind:
            self._dummy = dummy_hash(kind)
            self._dummy_kind = kind

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if now - self._checked < _RECHECK_FILE:
            return
        self._checked = now
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime != self._mtime:
                self._file_users = read_htpasswd(self._path)
                self._mtime = mtime
                self._cache.clear()
                self._merge()
        except (OSError, AuthConfigError):
            pass  # keep the users we have; a half-written file must not lock everyone out

    def _mac(self, user: str, password: str) -> bytes:
        msg = user.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def cached(self, user: str, password: str) -> bool:
        """True when these credentials were verified less than ``cache_ttl`` ago."""
        self._reload_if_changed()
        entry = self._cache.get(user)
        if entry is None:
            return False
        mac, expires = entry
        if time.monotonic() >= expires:
            del self._cache[user]
            return False
        return hmac.compare_digest(mac, self._mac(user, password))

    async def verify(self, user: str, password: str) -> bool:
        if too_long(user) or too_long(password):
            return False  # refused before any hashing: the work grows with the length
        if self.cached(user, password):  # which also reads a changed htpasswd file again
            return True
        hashed = self._users.get(user)
        dummy = self._dummy
        async with self._checks:
            loop = asyncio.get_running_loop()
            if hashed is None:
                await loop.run_in_executor(None, verify_hash, password, dummy)
                return False
            ok = await loop.run_in_executor(None, verify_hash, password, hashed)
        if ok:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[user] = (self._mac(user, password), time.monotonic() + self._ttl)
        return ok
