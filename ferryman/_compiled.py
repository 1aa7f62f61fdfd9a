"""The hot-path modules that ``scripts/build`` compiles with mypyc, and the guard that keeps
stale builds out.

Ferryman is plain Python and runs as such. ``scripts/build`` (which ``scripts/run`` and
``scripts/test`` call) compiles the modules below into C extensions beside their sources;
Python then imports those instead. The source stays the truth: the build records a hash of
each source it compiled, and when any differs (or the list does, or ``FERRYMAN_PURE=1`` is
set) every one of them is imported from its ``.py`` file, so an edit is never shadowed by an
old build. They are all or nothing because compiled modules call each other directly, past
the import system.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MODULES = (
    "ferryman.context",
    "ferryman.filters.base",
    "ferryman.filters.forwarded",
    "ferryman.filters.headers",
    "ferryman.http.h1",
    "ferryman.http.headers",
    "ferryman.proxy.forward",
    "ferryman.routing.table",
    "ferryman.server.deadline",
    "ferryman.server.h1",
    "ferryman.server.listener",
    "ferryman.server.pipeline",
    "ferryman.server.splicing",
    "ferryman.upstream.balancer",
    "ferryman.upstream.connection",
    "ferryman.upstream.group",
    "ferryman.upstream.peer",
    "ferryman.upstream.pool",
)

# The shared library mypyc builds for the group (``setup.py`` names it): the code of every
# listed module; their own extensions are shims that load it.
GROUP = "ferryman._hot"
_LIBRARY = GROUP + "__mypyc"

_ROOT = Path(__file__).resolve().parent.parent


def source(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extensions() -> list[str]:
    """Every module under ``ferryman/`` that has a compiled extension beside it."""
    found = []
    for path in (_ROOT / "ferryman").rglob("*.so"):
        parts = path.relative_to(_ROOT).with_name(path.name.split(".")[0]).parts
        found.append(".".join(parts))
    return found


def _stamp() -> Path:
    return _ROOT / "ferryman" / "_hot.modules"


def stamp_text() -> str:
    """What a build of the sources as they are now records: the interpreter, and each module
    with a hash of its source. setup.py takes it before compiling, so an edit made meanwhile
    shows. Another build of the same Python version (a venv remade on another interpreter)
    shares the extensions' file names but not always their internals: it makes the build
    stale too."""
    lines = [f"python {sys.version}"]
    lines += [f"{m} {hashlib.sha1(source(m).read_bytes()).hexdigest()}" for m in MODULES]
    return "\n".join(lines) + "\n"


def stale() -> list[str]:
    """The modules a compiled build present would run out of date: all of them when the
    sources, or the module list, differ from what the build recorded (its modules call each
    other directly, so they are current together or not at all), and any module compiled by
    an earlier list. Empty when there is no build, or when it is current."""
    present = _extensions()
    if not present:
        return []
    orphans = [m for m in present if m not in MODULES and m != _LIBRARY]
    stamp = _stamp().read_text(encoding="utf-8") if _stamp().exists() else ""
    complete = all(m in present for m in (*MODULES, _LIBRARY))
    if not orphans and complete and stamp == stamp_text():
        return []
    return [*MODULES, *orphans]


class _SourceFirst:
    """A meta-path finder that loads the listed modules from their ``.py`` files."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or not source(fullname).exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def guard() -> None:
    """Called once from ``ferryman/__init__``, before any listed module is imported."""
    pure = os.environ.get("FERRYMAN_PURE") == "1"
    old = [] if pure else stale()
    if old:
        print(
            "ferryman: the compiled build does not match the sources; running plain Python."
            " scripts/build recompiles.",
            file=sys.stderr,
        )
    if old or pure:
        sys.meta_path.insert(0, _SourceFirst(old or MODULES))


def built() -> bool:
    """Whether a compiled build is present (current or not: see :func:`stale`)."""
    return _LIBRARY in _extensions()


def compiled() -> bool:
    """Whether the hot path runs compiled (for ``ferryman version`` and the startup log)."""
    import ferryman.server.h1

    return not (ferryman.server.h1.__file__ or "").endswith(".py")
