"""SHA-crypt (``$5$`` SHA-256 and ``$6$`` SHA-512), as glibc's crypt(3) and htpasswd make it.

Written from Ulrich Drepper's specification ("Unix crypt using SHA-256 and SHA-512", the
reference every libc follows) because the stdlib ``crypt`` module is deprecated and gone in
Python 3.13, and passlib is unmaintained. The tests check it against the specification's
vectors and against ``openssl passwd -5/-6``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

_ALPHABET = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
_ROUNDS_MIN = 1000
_ROUNDS_MAX = 999_999_999


def _order(covered: int, sha256: bool) -> list[tuple[int, ...]]:
    """The specification's byte order for the final encoding, as triples of indexes."""
    third = covered // 3
    out: list[tuple[int, ...]] = []
    for i in range(third):
        a, b, c = i, i + third, i + 2 * third
        if sha256:
            out.append([(a, b, c), (c, a, b), (b, c, a)][i % 3])
        else:
            out.append([(a, b, c), (b, c, a), (c, a, b)][i % 3])
    return out


_ORDER = {32: _order(30, True), 64: _order(63, False)}


def _b64(groups: list[tuple[int, ...]], digest: bytes, tail: list[int]) -> bytes:
    out = bytearray()

    def emit(w: int, n: int) -> None:
        for _ in range(n):
            out.append(_ALPHABET[w & 0x3F])
            w >>= 6

    for a, b, c in groups:
        emit((digest[a] << 16) | (digest[b] << 8) | digest[c], 4)
    if len(tail) == 2:  # SHA-256: bytes 31 and 30 in 3 characters
        emit((digest[tail[0]] << 8) | digest[tail[1]], 3)
    else:  # SHA-512: byte 63 in 2 characters
        emit(digest[tail[0]], 2)
    return bytes(out)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, setting: str) -> str:
    """The crypt string of ``password`` for ``setting`` (``$5$[rounds=N$]salt[$...]``)."""
    if setting.startswith("$5$"):
        new: Callable[..., hashlib._Hash] = hashlib.sha256
        size, prefix = 32, "$5$"
    elif setting.startswith("$6$"):
        new, size, prefix = hashlib.sha512, 64, "$6$"
    else:
        raise ValueError("not a SHA-crypt setting")
    rest = setting[3:]
    rounds = ROUNDS_DEFAULT
    explicit = False
    if rest.startswith("rounds="):
        spec, sep, rest = rest[7:].partition("$")
        if not sep or not spec.isdigit():
            raise ValueError("bad rounds= in SHA-crypt setting")
        rounds = min(max(int(spec), _ROUNDS_MIN), _ROUNDS_MAX)
        explicit = True
    salt = rest.split("$", 1)[0][:16].encode("ascii")
    p = password

    b = new(p + salt + p).digest()
    ctx = new(p + salt + _repeat(b, len(p)))
    n = len(p)
    while n:
        ctx.update(b if n & 1 else p)
        n >>= 1
    a = ctx.digest()
    dp = new()
    for _ in range(len(p)):  # the specification's p * len(p), hashed without building it
        dp.update(p)
    p_bytes = _repeat(dp.digest(), len(p))
    s_bytes = _repeat(new(salt * (16 + a[0])).digest(), len(salt))

    c = a
    for i in range(rounds):
        h = new(p_bytes if i & 1 else c)
        if i % 3:
            h.update(s_bytes)
        if i % 7:
            h.update(p_bytes)
        h.update(c if i & 1 else p_bytes)
        c = h.digest()

    tail = [31, 30] if size == 32 else [63]
    encoded = _b64(_ORDER[size], c, tail).decode("ascii")
    head = f"{prefix}rounds={rounds}$" if explicit else prefix
    return f"{head}{salt.decode('ascii')}${encoded}"


def verify(password: bytes, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed``, compared in constant time."""
    try:
        computed = sha_crypt(password, hashed)
    except ValueError:
        return False
    return hmac.compare_digest(computed.encode("ascii"), hashed.encode("ascii"))
