"""Static files: which paths resolve to which files, and which are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferryman.config.schema import StaticHandler
from ferryman.filters.base import FilterChain
from ferryman.proxy.static import StaticFiles, url_segments


@pytest.mark.parametrize(
    ("path", "result"),
    [
        (b"/a/b.css", ["a", "b.css"]),
        (b"//a/./b.css", ["a", "b.css"]),
        (b"/with%20space.txt", ["with space.txt"]),
        (b"/caf%C3%A9.txt", ["café.txt"]),
        (b"/../etc/passwd", 400),
        (b"/a/%2e%2e/%2e%2e/etc/passwd", 400),
        (b"/a/%2E%2E%2F%2E%2E%2Fetc", 400),  # an encoded slash still makes a segment
        (b"/a/..", 400),
        (b"/a%00.css", 400),
        (b"/%ff%fe", 400),
        (b"/.git/config", 404),
        (b"/a/.env", 404),
        (b"/a..b/c", ["a..b", "c"]),
    ],
)
def test_url_segments(path: bytes, result: list[str] | int) -> None:
    assert url_segments(path) == result


def test_dotfiles_allowed_when_asked() -> None:
    assert url_segments(b"/.well-known/x", dotfiles=True) == [".well-known", "x"]
    assert url_segments(b"/.well-known/../x", dotfiles=True) == 400


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "css").mkdir(parents=True)
    (root / "css" / "app.css").write_text("body {}")
    (root / "inner-link.css").symlink_to(root / "css" / "app.css")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (root / "outer-link.txt").symlink_to(secret)
    (root / "outer-dir").symlink_to(tmp_path)
    return root


def handler(**options: object) -> StaticFiles:
    config = StaticHandler.model_validate(options)
    return StaticFiles(config, "/static/", FilterChain([]))


def test_root_and_alias(tree: Path) -> None:
    by_root = handler(root=str(tree.parent))
    assert by_root.locate(b"/site/css/app.css") == str(tree / "css" / "app.css")
    by_alias = handler(alias=str(tree))
    assert by_alias.locate(b"/static/css/app.css") == str(tree / "css" / "app.css")


def test_symlinks_out_of_the_root_are_refused(tree: Path) -> None:
    files = handler(alias=str(tree))
    assert files.locate(b"/static/inner-link.css") == str(tree / "css" / "app.css")
    assert files.locate(b"/static/outer-link.txt") == 403
    assert files.locate(b"/static/outer-dir/secret.txt") == 403
    allowed = handler(alias=str(tree), follow_outside_symlinks=True)
    assert allowed.locate(b"/static/outer-link.txt") == str(tree.parent / "secret.txt")


def test_root_given_through_a_symlink(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "site-link"
    link.symlink_to(tree)
    files = handler(alias=str(link))
    assert files.locate(b"/static/css/app.css") == str(tree / "css" / "app.css")


def test_content_types() -> None:
    files = handler(alias="/nonexistent", types={"webmanifest": "application/manifest+json"})
    assert files.content_type("a.css") == b"text/css; charset=utf-8"
    assert files.content_type("a.json") == b"application/json; charset=utf-8"
    assert files.content_type("a.PNG") == b"image/png"
    assert files.content_type("a.webmanifest") == b"application/manifest+json"
    assert files.content_type("noext") == b"application/octet-stream"
    plain = handler(alias="/nonexistent", charset=None)
    assert plain.content_type("a.css") == b"text/css"


def test_relative_directory_is_read_beside_the_config(tmp_path: Path) -> None:
    from ferryman.config.loader import load_config

    conf = tmp_path / "conf" / "ferryman.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "servers:\n  - listen: ['127.0.0.1:1']\n"
        "    routes: [{path: /s/, static: {alias: files/}}]\n"
    )
    static = load_config(conf).servers[0].routes[0].static
    assert static is not None
    assert static.alias == os.path.join(str(conf.parent), "files/")


def test_static_needs_one_directory() -> None:
    with pytest.raises(ValueError, match="exactly one of 'root' or 'alias'"):
        StaticHandler.model_validate({"root": "/a", "alias": "/b"})


class Recorder:
    """A downstream that records what a handler does with it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.length: int | None = None
        self.body = b""

    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> None:
        self.calls.append(f"start {status}")
        self.length = length

    def write(self, data: bytes) -> None:
        self.body += data

    def flush(self) -> None:
        pass

    async def send_file(self, fd: int, offset: int, count: int) -> bool:
        return False

    def finish(self) -> None:
        self.calls.append("finish")

    def abort(self, reason: str) -> None:
        self.calls.append("abort")

    def error(self, status: int, message: str) -> None:
        self.calls.append(f"error {status}")

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.calls.append(f"respond {status}")


def test_a_small_file_that_shrinks_is_aborted(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferryman.context import RequestContext

    page = tree / "page.html"
    page.write_bytes(b"x" * 1000)
    real_fstat = os.fstat

    def fstat_then_truncate(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if st.st_size == 1000:
            page.write_bytes(b"x" * 400)  # shrinks between the length and the read
        return st

    monkeypatch.setattr(os, "fstat", fstat_then_truncate)
    ctx = RequestContext("127.0.0.1", 5000, 80, "http", "GET", b"/static/page.html", "1.1", [], "x")
    down = Recorder()
    handler(alias=str(tree)).start(ctx, down)  # type: ignore[arg-type]
    assert down.length == 1000
    assert down.calls == ["start 200", "abort"]  # never a short body on a kept connection


def test_a_failing_body_filter_aborts_a_streamed_file(tree: Path) -> None:
    import asyncio

    from ferryman.context import RequestContext
    from ferryman.proxy.static import FileSender

    big = tree / "big.bin"
    big.write_bytes(b"y" * 200_000)

    def broken(ctx: RequestContext, data: bytes, last: bool) -> bytes:
        raise RuntimeError("filter bug")

    async def run() -> Recorder:
        ctx = RequestContext("127.0.0.1", 5000, 80, "http", "GET", b"/big.bin", "1.1", [], "x")
        down = Recorder()
        fd = os.open(big, os.O_RDONLY)
        FileSender(ctx, down, fd, [(b"", 0, 200_000)], b"", (broken,), False)  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0.01)
            if down.calls:
                break
        return down

    assert asyncio.run(run()).calls == ["abort"]
