""" "Off means no patches": what the benchmarks check, read from the integrations' own tables.

Every integration declares its patch points in one table (``Integration.patches``) that
``install()``, ``uninstall()`` and the tests read; the benchmarks read it too, so a new
integration's patches are checked here without touching the benchmarks.  Two checks, each
catching what the other could miss:

- the **table**: every patch point of every integration whose module is imported holds the
  object it held before loopguard was installed (``originals()`` then ``changed()``), and
  carries no wrapper mark;
- the **scan** (``_worker.patched_attributes``): no attribute of any class in any loaded
  module carries loopguard's wrapper mark, whether a table lists it or not.

Importing ``loopguard.integrations`` patches nothing (row 5c checks that too); a process that
must never import loopguard (the off workers) calls ``originals()`` only at the very end,
against a snapshot of the classes' dicts taken at its start (``class_dicts()``).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Tuple

WRAPPED_MARK = "__loopguard_wrapped__"  # loopguard._patching.WRAPPED_MARK
MISSING = object()

Point = Tuple[str, Any, str]  # ("module.Class.attribute", owner, attribute)


def points() -> List[Point]:
    """Every patch point of every integration (built-in and entry points) whose library is
    imported in this process: the points ``install()`` patches here, and no others."""
    from loopguard.integrations import all_integrations

    found = []
    for integration in all_integrations():
        # (A package from before the patch tables, measured with --loopguard-src or
        # layouts.py for comparison, has neither: it has no points to check.)
        if getattr(integration, "module", None) not in sys.modules:
            continue
        for patch in getattr(integration, "patches", ()):
            if patch.module not in sys.modules:
                continue
            try:
                owner = patch.resolve()
            except AttributeError:  # an optional point this version of the library lacks
                continue
            found.append((str(patch), owner, patch.attribute))
    return found


def originals() -> Dict[str, Tuple[Any, str, Any]]:
    """name -> (owner, attribute, what the owner's ``__dict__`` holds now)."""
    return {
        name: (owner, attribute, vars(owner).get(attribute, MISSING))
        for name, owner, attribute in points()
    }


def _marked(value: Any) -> bool:
    try:
        return getattr(value, WRAPPED_MARK, False) is True
    except Exception:  # noqa: BLE001 - exotic descriptors: not ours
        return False


def changed(before: Dict[str, Tuple[Any, str, Any]]) -> List[str]:
    """The patch points whose attribute is not what ``before`` recorded, or is loopguard's
    wrapper; points of modules imported since ``before`` must carry no wrapper."""
    bad = []
    for name, owner, attribute in points():
        now = vars(owner).get(attribute, MISSING)
        if name in before and before[name][2] is not now:
            bad.append(f"{name} replaced")
        elif _marked(now):
            bad.append(f"{name} is loopguard's wrapper")
    return bad


def class_dicts() -> Dict[int, Tuple[Any, Dict[str, Any]]]:
    """id -> (class, a copy of its ``__dict__``) for every class in every loaded module."""
    found: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
    for module in list(sys.modules.values()):
        for obj in list(getattr(module, "__dict__", {}).values()):
            if isinstance(obj, type) and id(obj) not in found:
                found[id(obj)] = (obj, dict(vars(obj)))
    return found


def changed_since(snapshot: Dict[int, Tuple[Any, Dict[str, Any]]]) -> List[str]:
    """The patch points (per the tables) whose attribute differs from ``snapshot``, a
    ``class_dicts()`` taken before loopguard was imported; imports loopguard.integrations."""
    bad = []
    for name, owner, attribute in points():
        entry = snapshot.get(id(owner))
        now = vars(owner).get(attribute, MISSING)
        if entry is not None and entry[1].get(attribute, MISSING) is not now:
            bad.append(f"{name} replaced")
        elif _marked(now):
            bad.append(f"{name} is loopguard's wrapper")
    return bad


def marked_points() -> Tuple[List[str], List[str]]:
    """(the patch points that carry loopguard's wrapper now, those that do not)."""
    on, off = [], []
    for name, owner, attribute in points():
        (on if _marked(vars(owner).get(attribute, MISSING)) else off).append(name)
    return on, off
