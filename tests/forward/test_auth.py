"""Password hashes, htpasswd files, Basic credentials and the verification cache."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from ferryman.config.forward import ForwardAuth, ForwardUser
from ferryman.forward import shacrypt
from ferryman.forward.auth import (
    AuthConfigError,
    Authenticator,
    parse_basic,
    read_htpasswd,
    verify_hash,
)

ROOT = Path(__file__).resolve().parents[2]


def test_sha_crypt_specification_vectors() -> None:
    # From "Unix crypt using SHA-256 and SHA-512" (Drepper), the reference glibc follows.
    assert (
        shacrypt.sha_crypt(b"Hello world!", "$5$rounds=10000$saltstringsaltstring")
        == "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"
    )
    assert shacrypt.sha_crypt(b"Hello world!", "$6$saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFd"
        "cbYEdFCoEOfaS35inz1"
    )


@pytest.mark.parametrize("flag", ["-5", "-6"])
@pytest.mark.parametrize("password", ["wonderland", "a", "x" * 70, "pässwörd"])
def test_sha_crypt_matches_openssl(flag: str, password: str) -> None:
    hashed = subprocess.run(
        ["openssl", "passwd", flag, "-salt", "Ferryman1234", password],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert shacrypt.sha_crypt(password.encode(), hashed) == hashed
    assert shacrypt.verify(password.encode(), hashed)
    assert not shacrypt.verify(password.encode() + b"!", hashed)


def test_verify_hash_bcrypt_and_junk() -> None:
    h = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(4)).decode()
    assert verify_hash("wonderland", h)
    assert not verify_hash("wonderlan", h)
    assert not verify_hash("x", "$2b$04$notahash")
    assert not verify_hash("x", "$5$rounds=x$abc")


def test_example_htpasswd() -> None:
    users = read_htpasswd(str(ROOT / "examples" / "htpasswd"))
    assert set(users) == {"alice", "bob"}
    assert verify_hash("wonderland", users["alice"])
    assert verify_hash("builder", users["bob"])


def test_htpasswd_refuses_weak_hashes(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    f.write_text("alice:$apr1$abc$def\n")
    with pytest.raises(AuthConfigError, match=r"htpasswd:1: unsupported password hash"):
        read_htpasswd(str(f))
    f.write_text("# comment\n\nnocolon\n")
    with pytest.raises(AuthConfigError, match=r":3: expected user:hash"):
        read_htpasswd(str(f))


def test_parse_basic() -> None:
    token = base64.b64encode(b"alice:wonder:land")
    assert parse_basic(b"Basic " + token) == ("alice", "wonder:land")
    assert parse_basic(b"basic  " + token) == ("alice", "wonder:land")
    assert parse_basic(b"Bearer " + token) is None
    assert parse_basic(b"Basic !!!") is None
    assert parse_basic(b"Basic " + base64.b64encode(b"nocolon")) is None
    assert parse_basic(None) is None


def test_authenticator_caches_and_reloads(tmp_path: Path) -> None:
    f = tmp_path / "htpasswd"
    f.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(10)).decode() + "\n")
    sha = shacrypt.sha_crypt(b"builder", "$6$abcdefgh")
    config = ForwardAuth(
        htpasswd=str(f),
        users={"bob": ForwardUser(password=sha, groups=["ops"])},
        groups={"staff": ["alice"]},
        cache_ttl=60,
    )

    async def run() -> None:
        auth = Authenticator(config)
        assert await auth.verify("alice", "wonderland")
        assert auth.cached("alice", "wonderland")
        assert not auth.cached("alice", "wonderlanD")
        t = time.perf_counter()
        assert await auth.verify("alice", "wonderland")
        assert time.perf_counter() - t < 0.01  # from the cache, not bcrypt again
        assert not await auth.verify("alice", "wrong")
        assert await auth.verify("bob", "builder")
        assert not await auth.verify("nobody", "x")
        assert auth.groups("alice") == {"staff"} and auth.groups("bob") == {"ops"}
        # A changed file is read again and forgets cached passwords.
        new = bcrypt.hashpw(b"looking-glass", bcrypt.gensalt(4)).decode()
        f.write_text(f"alice:{new}\n")
        auth._checked = 0.0
        import os

        os.utime(f, (time.time() + 5, time.time() + 5))
        assert not await auth.verify("alice", "wonderland")
        assert await auth.verify("alice", "looking-glass")

    asyncio.run(run())


def test_overlong_credentials_fail_without_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    long_password = "p" * 300
    hashed = shacrypt.sha_crypt(long_password.encode(), "$6$rounds=1000$longpw")
    auth = Authenticator(ForwardAuth(users={"bob": ForwardUser(password=hashed)}))
    calls: list[str] = []

    def spy(password: str, h: str) -> bool:
        calls.append(h)
        return verify_hash(password, h)

    monkeypatch.setattr("ferryman.forward.auth.verify_hash", spy)
    assert not asyncio.run(auth.verify("bob", long_password))  # over 256 bytes: refused
    assert not asyncio.run(auth.verify("u" * 257, "x"))
    assert not asyncio.run(auth.verify("bob", "é" * 129))  # 258 bytes in UTF-8
    assert calls == []
    ok = shacrypt.sha_crypt(b"q" * 256, "$6$rounds=1000$longpw")
    auth = Authenticator(ForwardAuth(users={"bob": ForwardUser(password=ok)}))
    assert asyncio.run(auth.verify("bob", "q" * 256))  # the limit itself is fine


def test_sha_crypt_does_not_build_the_repeated_password() -> None:
    import tracemalloc

    password = b"x" * 3000  # p * len(p) would be 9 MB
    tracemalloc.start()
    try:
        shacrypt.sha_crypt(password, "$5$rounds=1000$memsalt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    # Still the specification's answer (the same as glibc and openssl give).
    hashed = subprocess.run(
        ["openssl", "passwd", "-5", "-salt", "memsalt", "y" * 256],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert shacrypt.verify(b"y" * 256, hashed)


@pytest.mark.parametrize(
    "hashes, kind",
    [
        ([shacrypt.sha_crypt(b"a", "$6$rounds=1000$s1")], "$6$rounds=1000$"),
        ([shacrypt.sha_crypt(b"a", "$5$s2")], "$5$rounds=5000$"),
        (
            [shacrypt.sha_crypt(b"a", "$6$s3"), bcrypt.hashpw(b"a", bcrypt.gensalt(6)).decode()],
            "$2b$06",
        ),
    ],
)
def test_unknown_users_are_checked_like_the_configured_ones(
    monkeypatch: pytest.MonkeyPatch, hashes: list[str], kind: str
) -> None:
    users = {f"u{i}": ForwardUser(password=h) for i, h in enumerate(hashes)}
    auth = Authenticator(ForwardAuth(users=users))
    seen: list[str] = []

    def spy(password: str, h: str) -> bool:
        seen.append(h)
        return verify_hash(password, h)

    monkeypatch.setattr("ferryman.forward.auth.verify_hash", spy)
    assert not asyncio.run(auth.verify("nobody", "guess"))
    [dummy] = seen
    if kind.startswith("$2"):
        assert dummy.startswith(("$2a$" + kind[4:], "$2b$" + kind[4:]))
    else:
        assert dummy.startswith(kind) and dummy != hashes[0]
