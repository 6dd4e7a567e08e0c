"""Start-up activation for programs run with ``LOOPGUARD`` set (no code change).

The ``asyncio_loopguard.pth`` file installed next to the package runs one line at every
interpreter start: it reads the ``LOOPGUARD`` environment variable and, only when it asks
for loopguard, imports this module.  Nothing is installed here and now: a finder waits for
the first import of ``asyncio`` (which every guarded library, and any code that uses
``loopguard.track()``, imports first) and calls ``loopguard.install()`` right after it, so
unrelated Python processes (pip, linters) that inherit the variable pay nothing beyond this
module.  The guards themselves wait for their own library's import in turn.  In a pytest
run (pytest's plugins import asyncio before loopguard's plugin takes over) the hook waits
for a guarded library's import instead (SQLAlchemy's asyncio extension, asyncpg, httpx,
aiohttp, redis.asyncio, psycopg_pool), by which time the plugin has decided.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import List

from . import _after_import

TRIGGERS = (
    "asyncio",
    "sqlalchemy.ext.asyncio",
    "asyncpg",
    "httpx",
    "aiohttp",
    "redis.asyncio",
    "psycopg_pool",
)

_hooks: List[_after_import.AfterImport] = []


def _remove_finder() -> None:
    for hook in _hooks:
        _after_import.cancel(hook)
    _hooks.clear()


def hand_over() -> None:
    """The pytest plugin or ``loopguard run`` decides from now on: stop waiting."""
    _remove_finder()


def _install_now() -> None:
    _remove_finder()
    from . import _activation, _install
    from ._errors import ConfigError, MissingDependencyError
    from ._state import STATE

    if STATE.installed:  # installed by a setting that wins (--loopguard, install())
        return
    try:
        activation = _activation.for_startup_hook()
        if activation.mode is not None:
            _install.apply(activation, keep_installed=True)  # installed meanwhile: left as is
    except ConfigError as exc:
        # A bad setting never leaves the program silently unguarded: it stops here, where
        # loopguard would have installed, with one line and no traceback (SystemExit leaves
        # the import statement and ends the program with this status).
        print(f"loopguard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except MissingDependencyError as exc:
        # Not a setting to fix: the variable must not break the program.
        print(f"loopguard: not installed: {exc}", file=sys.stderr)


def _on_trigger(module: ModuleType) -> None:
    if module.__name__ == "asyncio" and "_pytest" in sys.modules:
        return  # pytest is starting: its plugin decides (the other triggers still wait)
    _install_now()


def start() -> None:
    """Called from the .pth line when LOOPGUARD asks for loopguard."""
    if any(name in sys.modules for name in TRIGGERS) and "_pytest" not in sys.modules:
        _install_now()
    elif not _hooks:
        _hooks.extend(_after_import.call_after_import(name, _on_trigger) for name in TRIGGERS)
