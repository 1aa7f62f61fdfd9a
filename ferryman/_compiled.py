"""The hot-path modules that ``scripts/build`` compiles with mypyc, and the guard that keeps
stale builds out.

Ferryman is plain Python and runs as such. ``scripts/build`` (which ``scripts/run`` and
``scripts/test`` call) compiles the modules below into C extensions beside their sources;
Python then imports those instead. The source stays the truth: when any compiled module is
older than its source, or ``FERRYMAN_PURE=1`` is set, every one of them is imported from its
``.py`` file, so an edit is never shadowed by an old build. They are all or nothing because
compiled modules call each other directly, past the import system.
"""

from __future__ import annotations

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
    "ferryman.upstream.balancer",
    "ferryman.upstream.connection",
    "ferryman.upstream.group",
    "ferryman.upstream.peer",
    "ferryman.upstream.pool",
)

# The shared library mypyc builds for the group (``setup.py`` names it).
GROUP = "ferryman._hot"

_ROOT = Path(__file__).resolve().parent.parent


def source(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path | None:
    src = source(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        built = src.with_suffix(suffix)
        if built.exists():
            return built
    return None


# Written by scripts/build after a build: the module list it compiled. A build of another
# list is stale as a whole, since its modules call each other directly.
def _stamp() -> Path:
    return _ROOT / "ferryman" / "_hot.modules"


def write_stamp() -> None:
    _stamp().write_text("\n".join(MODULES) + "\n", encoding="utf-8")


def stale() -> list[str]:
    """Modules whose source is newer than the build (or that were not built while others
    were): running the build would run old code. The group's shared library holds every
    module's code; the per-module extensions are shims a rebuild may leave untouched."""
    built = {m: _extension(m) for m in MODULES}
    lib = _extension(GROUP + "__mypyc")
    if lib is None and not any(built.values()):
        return []
    stamp = _stamp().read_text(encoding="utf-8").split() if _stamp().exists() else []
    if stamp != list(MODULES):
        return list(MODULES)
    when = lib.stat().st_mtime if lib is not None else 0.0
    return [m for m, ext in built.items() if ext is None or when < source(m).stat().st_mtime]


class _SourceFirst:
    """A meta-path finder that loads the listed modules from their ``.py`` files."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def guard() -> None:
    """Called once from ``ferryman/__init__``, before any listed module is imported."""
    old = [] if os.environ.get("FERRYMAN_PURE") == "1" else stale()
    if old:
        print(
            f"ferryman: the compiled build is older than {source(old[0]).relative_to(_ROOT)}"
            f" (and {len(old) - 1} more); running plain Python. scripts/build recompiles.",
            file=sys.stderr,
        )
    if old or os.environ.get("FERRYMAN_PURE") == "1":
        sys.meta_path.insert(0, _SourceFirst(MODULES))


def built() -> bool:
    """Whether a compiled build is present (current or not: see :func:`stale`)."""
    return _extension(GROUP + "__mypyc") is not None


def compiled() -> bool:
    """Whether the hot path runs compiled (for ``ferryman version`` and the startup log)."""
    import ferryman.server.h1

    return not (ferryman.server.h1.__file__ or "").endswith(".py")
