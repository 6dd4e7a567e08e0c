"""Run a function right after a module's first import, without importing the module ourselves.

Importing a library only to patch it costs its import time in every process, including the
many that never use it (uvloop: ~5 ms).  One finder at the front of ``sys.meta_path`` finds
nothing itself: when a module someone waits for is being imported it asks the real finders
for the spec and wraps the loader's ``exec_module`` so the callbacks run once the module body
has run.  One finder for every waiting callback, because every import the process attempts
(anyio tries ``import sniffio`` on each request when it is not installed) asks each finder on
``sys.meta_path``: one Python call per attempt, whatever the number of callbacks.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any, Callable, Optional, Sequence


class AfterImport:
    """A callback waiting for the first import of ``name``; the handle ``cancel()`` takes."""

    __slots__ = ("name", "callback", "cancelled")

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        self.cancelled = False

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"<loopguard: after importing {self.name}, {name}>"


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.waiting: dict[str, list[AfterImport]] = {}
        self._finding: set[str] = set()  # names being looked up by the real finders

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in self.waiting or fullname in self._finding:
            return None
        self._finding.add(fullname)  # the real finders are asked below; don't answer ourselves
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding.discard(fullname)
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            with _lock:
                hooks = self.waiting.pop(fullname, [])
                _leave_if_idle()
            for hook in hooks:
                if not hook.cancelled:  # cancelled while this import was already under way
                    hook.cancelled = True
                    hook.callback(module)

        loader.exec_module = exec_module
        return spec

    def __repr__(self) -> str:
        return f"<loopguard: after-import finder waiting for {sorted(self.waiting)}>"


_lock = threading.RLock()
_finder = _Finder()


def _leave_if_idle() -> None:
    if not _finder.waiting and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def call_after_import(name: str, callback: Callable[[ModuleType], None]) -> AfterImport:
    """Call ``callback(module)`` right after ``name`` is imported (not imported yet)."""
    hook = AfterImport(name, callback)
    with _lock:
        _finder.waiting.setdefault(name, []).append(hook)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
    return hook


def cancel(hook: AfterImport) -> None:
    """Forget ``hook``: its callback will not run, not even for an import under way."""
    hook.cancelled = True
    with _lock:
        hooks = _finder.waiting.get(hook.name)
        if hooks is not None and hook in hooks:
            hooks.remove(hook)
            if not hooks:
                del _finder.waiting[hook.name]
        _leave_if_idle()


def waiting() -> list[str]:
    """The module names callbacks are waiting for."""
    return sorted(_finder.waiting)
