"""The guard that keeps a compiled build that does not match the sources from running."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferryman import _compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
GROUP = _compiled.GROUP + "__mypyc"


def _file(root: Path, module: str, suffix: str, content: bytes = b"") -> Path:
    path = root.joinpath(*module.split(".")).with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sources of every listed module, a complete build of them and its stamp."""
    monkeypatch.setattr(_compiled, "_ROOT", tmp_path)
    for module in _compiled.MODULES:
        _file(tmp_path, module, ".py", f"# {module}\n".encode())
        _file(tmp_path, module, SUFFIX)
    _file(tmp_path, GROUP, SUFFIX)
    (tmp_path / "ferryman" / "_hot.modules").write_text(_compiled.stamp_text())
    return tmp_path


def test_no_build_is_not_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compiled, "_ROOT", tmp_path)
    for module in _compiled.MODULES:
        _file(tmp_path, module, ".py")
    assert _compiled.stale() == [] and not _compiled.built()


def test_a_build_of_these_sources_is_current(tree: Path) -> None:
    assert _compiled.stale() == [] and _compiled.built()


def test_an_edited_source_makes_the_whole_build_stale(tree: Path) -> None:
    # Content, not times: an edit saved during a build, or copied in with old times, shows.
    edited = _compiled.source(_compiled.MODULES[3])
    edited.write_bytes(edited.read_bytes() + b"x = 1\n")
    os.utime(edited, (1.0, 1.0))
    assert _compiled.stale() == list(_compiled.MODULES)


def test_a_missing_extension_or_another_module_list_is_stale(tree: Path) -> None:
    _compiled.source(_compiled.MODULES[0]).with_suffix(SUFFIX).unlink()
    assert _compiled.stale() == list(_compiled.MODULES)
    _file(tree, _compiled.MODULES[0], SUFFIX)
    (tree / "ferryman" / "_hot.modules").write_text("ferryman.server.h2 0\n")
    assert _compiled.stale() == list(_compiled.MODULES)


def test_an_extension_left_by_an_earlier_module_list_is_stale_and_loaded_from_source(
    tree: Path,
) -> None:
    _file(tree, "ferryman.server.h2", ".py")
    _file(tree, "ferryman.server.h2", SUFFIX)
    assert _compiled.stale() == [*_compiled.MODULES, "ferryman.server.h2"]


def test_ferryman_pure_imports_every_listed_module_from_source() -> None:
    code = (
        "import importlib, ferryman._compiled as c\n"
        "print(all(importlib.import_module(m).__file__.endswith('.py') for m in c.MODULES))\n"
        "print(c.compiled())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "FERRYMAN_PURE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["True", "False"]
