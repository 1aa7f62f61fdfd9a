"""The guard that keeps a stale compiled build from running instead of the sources."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferryman import _compiled

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _tree(root: Path, built: dict[str, float], sources_at: float) -> None:
    """Sources for every listed module at ``sources_at``; extensions for ``built`` (module ->
    mtime), the group's shared library among them when it is a key; the build's stamp."""
    (root / "ferryman").mkdir(parents=True, exist_ok=True)
    _compiled.write_stamp()
    for module in (*_compiled.MODULES, _compiled.GROUP + "__mypyc"):
        src = root.joinpath(*module.split(".")).with_suffix(".py")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("")
        os.utime(src, (sources_at, sources_at))
        if module in built:
            ext = src.with_suffix(SUFFIX)
            ext.write_bytes(b"")
            os.utime(ext, (built[module], built[module]))


def test_no_build_is_not_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compiled, "_ROOT", tmp_path)
    _tree(tmp_path, {}, 1000.0)
    assert _compiled.stale() == []


def test_a_build_newer_than_every_source_is_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_compiled, "_ROOT", tmp_path)
    # Shims may keep old times; the shared library is what counts.
    built = {m: 500.0 for m in _compiled.MODULES}
    built[_compiled.GROUP + "__mypyc"] = 2000.0
    _tree(tmp_path, built, 1000.0)
    assert _compiled.stale() == []


def test_an_edited_source_or_a_missing_module_makes_the_build_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_compiled, "_ROOT", tmp_path)
    built = {m: 2000.0 for m in _compiled.MODULES[1:]}
    built[_compiled.GROUP + "__mypyc"] = 2000.0
    _tree(tmp_path, built, 1000.0)
    assert _compiled.stale() == [_compiled.MODULES[0]]  # listed but never built
    edited = _compiled.source(_compiled.MODULES[2])
    os.utime(edited, (3000.0, 3000.0))
    assert _compiled.stale() == [_compiled.MODULES[0], _compiled.MODULES[2]]


def test_a_build_of_another_module_list_is_stale_as_a_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_compiled, "_ROOT", tmp_path)
    built = {m: 2000.0 for m in (*_compiled.MODULES, _compiled.GROUP + "__mypyc")}
    _tree(tmp_path, built, 1000.0)
    assert _compiled.stale() == []
    (tmp_path / "ferryman" / "_hot.modules").write_text("ferryman.server.h2\n")
    assert _compiled.stale() == list(_compiled.MODULES)


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
