"""Start-up activation for programs run with ``LOOPGUARD`` set (no code change).

The ``asyncio_loopguard.pth`` file installed next to the package runs one line at every
interpreter start: it reads the ``LOOPGUARD`` environment variable and, only when it asks
for loopguard, imports this module.  Nothing is installed here and now: a finder waits for
the first import of a guarded library (``sqlalchemy.ext.asyncio``, ``asyncpg`` or
``redis.asyncio``) and calls
``loopguard.install()`` right after it, so unrelated Python processes (pip, linters) that
inherit the variable pay nothing beyond this module.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import List

from . import _after_import

TRIGGERS = ("sqlalchemy.ext.asyncio", "asyncpg", "redis.asyncio")

activated = False  # True once the hook has installed loopguard
_hooks: List[_after_import.AfterImport] = []


def _remove_finder() -> None:
    for hook in _hooks:
        _after_import.cancel(hook)
    _hooks.clear()


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

    if loopguard.is_installed():  # installed by a setting that wins (--loopguard, install())
        return
    try:
        loopguard.install()
    except loopguard.LoopguardError as exc:
        # A .pth hook cannot stop the program; say clearly why it runs unguarded.
        print(f"loopguard: not installed: {exc}", file=sys.stderr)
        return
    activated = loopguard.is_installed()


def _on_trigger(module: ModuleType) -> None:
    _install_now()


def start() -> None:
    """Called from the .pth line when LOOPGUARD asks for loopguard."""
    if any(name in sys.modules for name in TRIGGERS):
        _install_now()
    elif not _hooks:
        _hooks.extend(_after_import.call_after_import(name, _on_trigger) for name in TRIGGERS)
