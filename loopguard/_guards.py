"""The integrations in effect: each one's patches go on when its library is imported, and all
come off together.

``start()`` enables an integration at once when its module is imported already, waits for
the import otherwise (nothing is imported for it), and skips it when the library is not
installed at all.  ``stop()`` undoes everything in reverse order, waiting hooks included.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from types import ModuleType
from typing import Optional

from . import _after_import
from ._patching import PatchStack
from .integrations._base import DidNotEnable, Integration


def _installed(module: str) -> bool:
    """The top-level package can be imported (found on the path; nothing is imported)."""
    top = module.partition(".")[0]
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


class Guards:
    """The integrations of one ``install()``, from ``start()`` to ``stop()``."""

    def __init__(self) -> None:
        self.enabled: list[Integration] = []
        self.waiting: dict[str, Integration] = {}  # name -> integration whose import is awaited
        self.skipped: dict[str, str] = {}  # name -> why it is not enabled
        self._patches: dict[str, PatchStack] = {}
        self._hooks: dict[str, _after_import.AfterImport] = {}
        self._order: dict[str, int] = {}  # name -> position in the list given to start()

    def start(self, integrations: list[Integration]) -> None:
        self._order = {integration.name: n for n, integration in enumerate(integrations)}
        for integration in integrations:
            module = sys.modules.get(integration.module)
            if module is not None:
                integration.imported_before_install = True
                self._enable(integration, module)
            elif _installed(integration.module):
                self.waiting[integration.name] = integration
                self._hooks[integration.name] = _after_import.call_after_import(
                    integration.module, functools.partial(self._imported, integration)
                )
            elif not integration.core:
                self.skipped[integration.name] = integration.not_installed()

    def _imported(self, integration: Integration, module: ModuleType) -> None:
        self._hooks.pop(integration.name, None)
        if self.waiting.pop(integration.name, None) is None:
            return
        try:
            self._enable(integration, module)
        except Exception as exc:  # a bug of loopguard's must not fail the user's import
            self.skipped[integration.name] = f"{type(exc).__name__}: {exc}"
            print(
                f"loopguard: cannot guard {integration.name}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )

    def _enable(self, integration: Integration, module: ModuleType) -> None:
        try:
            integration.check(module)
        except DidNotEnable as exc:
            self.skipped[integration.name] = str(exc)
            return
        patches = PatchStack()
        self._patches[integration.name] = patches
        try:
            for patch in integration.patches:
                importlib.import_module(patch.module)
                owner = patch.resolve()
                if patch.required or hasattr(owner, patch.attribute):
                    patches.wrap(owner, patch.attribute, patch.wrapper)
            integration.setup()
        except BaseException:
            # Nothing half-enabled: its listeners and patches come off again.
            try:
                integration.teardown()
            finally:
                patches.restore()
            del self._patches[integration.name]
            raise
        self.enabled.append(integration)

    def stop(self) -> None:
        """Undo every patch and listener; cancel the imports still awaited."""
        for hook in self._hooks.values():
            _after_import.cancel(hook)
        self._hooks.clear()
        self.waiting.clear()
        try:
            for integration in reversed(self.enabled):
                integration.teardown()
        finally:
            for name in reversed(list(self._patches)):
                self._patches.pop(name).restore()
            self.enabled.clear()

    def patch_count(self) -> int:
        return sum(len(stack) for stack in self._patches.values())

    def names(self) -> list[str]:
        """The integrations that guard or will guard once their library is imported."""
        found = [*self.enabled, *self.waiting.values()]
        # In the order of the list, whichever library was imported first: a stable header.
        found.sort(key=lambda i: self._order.get(i.name, len(self._order)))
        return [i.name for i in found if not i.core]

    def __repr__(self) -> str:
        return (
            f"<loopguard guards: enabled={[i.name for i in self.enabled]}, "
            f"waiting={list(self.waiting)}, skipped={self.skipped}>"
        )


def find(name: str, guards: Optional[Guards]) -> Optional[Integration]:
    """The enabled integration called ``name``, if any."""
    if guards is None:
        return None
    return next((i for i in guards.enabled if i.name == name), None)
