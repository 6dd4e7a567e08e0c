"""Run a function right after a module's first import, without importing the module ourselves.

Importing a library only to patch it costs its import time in every process, including the
many that never use it (uvloop: ~5 ms).  A finder at the front of ``sys.meta_path`` finds
nothing itself: when the module is being imported it asks the real finders for the spec and
wraps the loader's ``exec_module`` so the callback runs once the module body has run.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, Callable, Optional, Sequence


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` after ``name`` is first imported; removes itself first."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        self.cancelled = False
        self._finding = False

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != self.name or self._finding:
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
            if self.cancelled:  # cancelled while this import was already under way
                return
            cancel(self)
            self.callback(module)

        loader.exec_module = exec_module
        return spec

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"<loopguard: after importing {self.name}, {name}>"


def call_after_import(name: str, callback: Callable[[ModuleType], None]) -> AfterImport:
    """Call ``callback(module)`` right after ``name`` is imported (not imported yet)."""
    hook = AfterImport(name, callback)
    sys.meta_path.insert(0, hook)
    return hook


def cancel(hook: AfterImport) -> None:
    """Forget ``hook``: its callback will not run, not even for an import under way."""
    hook.cancelled = True
    if hook in sys.meta_path:
        sys.meta_path.remove(hook)
