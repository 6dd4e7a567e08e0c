"""Start-up activation for programs run with ``LOOPGUARD`` set (no code change).

The ``asyncio_loopguard.pth`` file installed next to the package runs one line at every
interpreter start: it reads the ``LOOPGUARD`` environment variable and, only when it asks
for loopguard, imports this module.  Nothing is installed here and now: a finder waits for
the first import of a guarded library (``sqlalchemy.ext.asyncio`` or ``asyncpg``) and calls
``loopguard.install()`` right after it, so unrelated Python processes (pip, linters) that
inherit the variable pay nothing beyond this module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, Optional, Sequence

TRIGGERS = frozenset({"sqlalchemy.ext.asyncio", "asyncpg"})

activated = False  # True once the hook has installed loopguard


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a trigger module to install afterwards."""

    def __init__(self) -> None:
        self._finding = False

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in TRIGGERS or self._finding:
            return None
        self._finding = True  # the real finders are asked below; don't answer ourselves
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            _install_now()

        loader.exec_module = exec_module
        return spec


def _remove_finder() -> None:
    for finder in list(sys.meta_path):
        if isinstance(finder, _InstallAfterImport):
            sys.meta_path.remove(finder)


def stand_down() -> None:
    """A higher-precedence setting (pytest's --loopguard=off) overrides LOOPGUARD."""
    global activated
    _remove_finder()
    if activated:
        import loopguard

        activated = False
        if loopguard.is_installed():
            loopguard.uninstall()


def _install_now() -> None:
    global activated
    _remove_finder()
    if activated:
        return
    import loopguard

    try:
        loopguard.install()
    except loopguard.LoopguardError as exc:
        # A .pth hook cannot stop the program; say clearly why it runs unguarded.
        print(f"loopguard: not installed: {exc}", file=sys.stderr)
        return
    activated = loopguard.is_installed()


def start() -> None:
    """Called from the .pth line when LOOPGUARD asks for loopguard."""
    if any(name in sys.modules for name in TRIGGERS):
        _install_now()
    elif not any(isinstance(f, _InstallAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterImport())
