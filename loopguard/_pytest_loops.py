"""Names for pytest-asyncio's event loops, so that messages say whose loop it was.

pytest-asyncio makes its loops in fixtures, one per loop scope and node:

- 1.1 and newer: ``_{scope}_scoped_runner``, yielding an ``asyncio.Runner``;
- 1.0: ``_{scope}_event_loop``, yielding the loop;
- 0.21 to 0.26: ``event_loop`` (function scope, or whatever scope a suite overrides it with),
  and from 0.23 ``_session_event_loop`` and ``<collector nodeid>::<event_loop>`` for the
  class, module and package loops.

The ``pytest_fixture_setup`` wrapper of loopguard's pytest plugin (in ``_pytest_scopes``)
passes each fixture's value to ``name_loop_fixture`` as it is made, which names a loop after
the fixture's scope and the node it belongs to, e.g. "pytest-asyncio's
session-scoped loop" or "pytest-asyncio's module-scoped loop for tests/test_a.py"; every
message that mentions the loop then says so (``loop #3 (pytest-asyncio's session-scoped
loop), which is still open but not running``).  The plugin object is registered only when
loopguard is active, so nothing here runs otherwise.
"""

from __future__ import annotations

import asyncio
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


def _new_style_wrapper() -> Optional[Decorator]:
    """``pytest.hookimpl(wrapper=True)``, or None where pluggy predates it (< 1.1)."""
    try:
        decorator: Decorator = pytest.hookimpl(wrapper=True)
    except TypeError:
        return None
    return decorator


fixture_wrapper = _new_style_wrapper()
# The loop-scope plugin (with the loop naming) needs new-style hook wrappers; on an older
# pluggy it is not registered.
SUPPORTED = fixture_wrapper is not None


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


def name_loop_fixture(fixturedef: Any, request: Any, value: Any) -> None:
    """Name the loop ``value`` holds when ``fixturedef`` is one of pytest-asyncio's loop
    fixtures; nothing otherwise.  Called from the ``pytest_fixture_setup`` wrapper of
    ``_pytest_scopes.LoopScopeCheck``: one wrapper around every fixture setup, not two."""
    loop = loop_of(fixturedef.argname, value)
    if loop is not None:
        node = getattr(request, "node", None)
        label = loop_label(fixturedef.scope, getattr(node, "nodeid", ""))
        _loops.name_loop(loop, label, PYTEST_ASYNCIO)
