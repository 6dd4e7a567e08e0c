"""Names for pytest-asyncio's event loops, so that messages say whose loop it was.

pytest-asyncio makes its loops in fixtures, one per loop scope and node:

- 1.1 and newer: ``_{scope}_scoped_runner``, yielding an ``asyncio.Runner``;
- 1.0: ``_{scope}_event_loop``, yielding the loop;
- 0.21 to 0.26: ``event_loop`` (function scope, or whatever scope a suite overrides it with),
  and from 0.23 ``_session_event_loop`` and ``<collector nodeid>::<event_loop>`` for the
  class, module and package loops.

The ``pytest_runtest_setup`` wrapper of loopguard's pytest plugin (in ``_pytest_scopes``)
calls ``name_loops_of(item)`` once the test's fixtures are set up, which names each of these
loops after its fixture's scope and the node it belongs to, e.g. "pytest-asyncio's
session-scoped loop" or "pytest-asyncio's module-scoped loop for tests/test_a.py"; every
later message that mentions the loop then says so, also once it is closed (``loop #3
(pytest-asyncio's session-scoped loop), which is still open but not running``).  A message
written during the setup names a loop made in that same setup (``_loops.late_namer``).  The
plugin object is registered only when loopguard is active, so nothing here runs otherwise.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Optional

import pytest

from . import _loops
from ._patterns import PYTEST_ASYNCIO

SCOPES = ("function", "class", "module", "package", "session")
_RUNNER_FIXTURES = frozenset(f"_{scope}_scoped_runner" for scope in SCOPES)
_LOOP_FIXTURES = frozenset({"event_loop", *(f"_{scope}_event_loop" for scope in SCOPES)})
_COLLECTOR_LOOP_SUFFIX = "::<event_loop>"  # 0.23 to 0.26: class, module and package loops


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _new_style_wrapper(trylast: bool = False) -> Optional[Decorator]:
    """``pytest.hookimpl(wrapper=True, trylast=...)``, or None where pluggy predates it (< 1.1)."""
    try:
        decorator: Decorator = pytest.hookimpl(wrapper=True, trylast=trylast)
    except TypeError:
        return None
    return decorator


wrapper = _new_style_wrapper()
# trylast: the innermost wrapper of a test's setup, inside pytest's output capture and
# logging of the setup phase.
setup_wrapper = _new_style_wrapper(trylast=True)
# The loop-scope plugin (with the loop naming) needs new-style hook wrappers; on an older
# pluggy it is not registered.
SUPPORTED = setup_wrapper is not None


def loop_of(argname: str, value: Any) -> Optional[asyncio.AbstractEventLoop]:
    """The loop made by one of pytest-asyncio's loop fixtures, or None for any other fixture."""
    if argname in _RUNNER_FIXTURES:
        get_loop = getattr(value, "get_loop", None)
        if get_loop is None:
            return None
        try:
            value = get_loop()
        except RuntimeError:  # a runner that is closed already
            return None
    elif argname not in _LOOP_FIXTURES and not argname.endswith(_COLLECTOR_LOOP_SUFFIX):
        return None
    return value if isinstance(value, asyncio.AbstractEventLoop) else None


def loop_label(scope: str, node_id: str) -> str:
    """``pytest-asyncio's module-scoped loop for tests/test_a.py``; no node for the session."""
    if scope == "session" or not node_id:
        return f"pytest-asyncio's {scope}-scoped loop"
    return f"pytest-asyncio's {scope}-scoped loop for {node_id}"


_NAMED_FIXTURES = _RUNNER_FIXTURES | _LOOP_FIXTURES

# The node a fixture of each scope belongs to (what ``request.node`` is for its fixture).
_SCOPE_NODES: dict[str, type[pytest.Collector]] = {
    "class": pytest.Class,
    "module": pytest.Module,
    "package": pytest.Package,
}


def _node_id(item: pytest.Item, scope: str) -> str:
    if scope == "function":
        return item.nodeid
    node_type = _SCOPE_NODES.get(scope)
    node = item.getparent(node_type) if node_type is not None else None
    return node.nodeid if node is not None else ""


def _fixture_defs(item: pytest.Item) -> Any:
    """(argname, FixtureDef) of every fixture set up for ``item``: its request's record, which
    also holds the fixtures requested dynamically (pytest-asyncio asks for its loop fixtures
    with ``getfixturevalue``); the static closure where pytest has no such record."""
    used = getattr(getattr(item, "_request", None), "_fixture_defs", None)
    if isinstance(used, dict):
        return used.items()
    return _static_fixture_defs(item)


def _static_fixture_defs(item: pytest.Item) -> Any:
    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", None) or {}
    return ((name, defs[-1]) for name, defs in definitions.items() if defs)


# The test whose setup is running (set by the setup wrapper): its loops are named at the end
# of the setup, or earlier when a message during the setup asks for a loop's name.
setting_up: Optional[pytest.Item] = None


def _name_loops_in_setup() -> None:
    if setting_up is not None:
        name_loops_of(setting_up)


_loops.late_namer = _name_loops_in_setup


# id(FixtureDef) -> the number of the loop last named for it: a loop fixture's value is the
# same for every test of its scope, and is named once (numbers are never reused).
_named: dict[int, int] = {}
# The names of the fixtures seen that are not loop fixtures: one set test per fixture per test.
_not_loop_fixtures: set[str] = set()


def name_loops_of(item: pytest.Item) -> None:
    """Name the loops of pytest-asyncio's loop fixtures set up for ``item``.  Called once the
    test's setup is done, from the ``pytest_runtest_setup`` wrapper of
    ``_pytest_scopes.LoopScopeCheck``: one call per test, not one per fixture."""
    used = getattr(getattr(item, "_request", None), "_fixture_defs", None)
    if not isinstance(used, dict):
        used = dict(_fixture_defs(item))
    # The fixtures not known to be anything else (a set difference, in C): usually the
    # test's loop fixture alone; two or more are taken in the order they were set up.
    candidates = used.keys() - _not_loop_fixtures
    for argname in candidates if len(candidates) < 2 else [n for n in used if n in candidates]:
        if argname not in _NAMED_FIXTURES and not argname.endswith(_COLLECTOR_LOOP_SUFFIX):
            _not_loop_fixtures.add(argname)
            continue
        fixturedef = used[argname]
        cached = getattr(fixturedef, "cached_result", None)
        if cached is None or cached[2] is not None:
            continue
        loop = loop_of(argname, cached[0])
        if loop is None:
            continue
        number = _loops.loop_id(loop)
        key = id(fixturedef)
        if _named.get(key) != number:
            _named[key] = number
            # The name is made when a message first needs it: most loops are never named in
            # any message.
            label = functools.partial(_label, fixturedef, item)
            _loops.name_numbered_loop(number, label, PYTEST_ASYNCIO)


def _label(fixturedef: Any, item: pytest.Item) -> str:
    scope = fixturedef.scope
    return loop_label(scope, _node_id(item, scope))
