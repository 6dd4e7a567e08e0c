"""The loop scopes pytest-asyncio runs async tests and async fixtures on (LG105), read the
way the installed pytest-asyncio reads them; a scope that cannot be read is None (unknown).
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any, NamedTuple, Optional

import pytest

from ._pytest_loops import SCOPES

# asyncio_default_fixture_loop_scope's value for "the fixture's own scope" (recent 1.x).
_MATCH_FIXTURE_SCOPE = "fixture-scope"


class LoopScope(NamedTuple):
    scope: str
    source: str  # where the value came from, for the message


def asyncio_plugin_version(config: pytest.Config) -> Optional[tuple[int, ...]]:
    """The version of the pytest-asyncio plugin active in this run, or None."""
    if not config.pluginmanager.has_plugin("asyncio"):  # not installed, or -p no:asyncio
        return None
    module = sys.modules.get("pytest_asyncio")
    match = re.match(r"(\d+)\.(\d+)", str(getattr(module, "__version__", "")))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _ini(config: pytest.Config, name: str) -> Optional[str]:
    try:
        value = config.getini(name)
    except ValueError:  # an option this pytest-asyncio version does not have
        return None
    return value if isinstance(value, str) and value else None


def asyncio_mode(config: pytest.Config) -> str:
    try:
        value = config.getoption("asyncio_mode")
    except ValueError:
        value = None
    return str(value or _ini(config, "asyncio_mode") or "strict")


def default_test_loop_scope(config: pytest.Config) -> Optional[LoopScope]:
    """The loop scope of an asyncio test whose marker names none, or None (unknown)."""
    scope = _ini(config, "asyncio_default_test_loop_scope")  # 0.26+
    source = "asyncio_default_test_loop_scope"
    if scope is None:
        scope, source = "function", "pytest-asyncio's default"
    return LoopScope(scope, source) if scope in SCOPES else None


_NOT_GIVEN: Any = object()


def loop_scope_of_test(
    item: pytest.Item, config: pytest.Config, default: Optional[LoopScope] = _NOT_GIVEN
) -> Optional[LoopScope]:
    """The loop scope pytest-asyncio runs ``item`` on, or None (not an asyncio test, unknown).
    ``default``: ``default_test_loop_scope(config)``, when the caller has it already (at
    collection it is read once, not once per test)."""
    # The item's own markers come first in get_closest_marker's walk, and pytest-asyncio
    # puts the marker there in auto mode: read them before walking the parents (pytest's
    # generators cost ~70 bytecodes per collected test).
    marker: Optional[pytest.Mark] = None
    for own in item.own_markers:
        if getattr(own, "name", None) == "asyncio":
            marker = own
            break
    else:
        marker = item.get_closest_marker("asyncio")
    if marker is None:
        return None
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    if not scope:
        return default_test_loop_scope(config) if default is _NOT_GIVEN else default
    return LoopScope(scope, "its asyncio marker") if scope in SCOPES else None


def _function_of(fixturedef: Any) -> Any:
    func = getattr(fixturedef, "func", None)
    return getattr(func, "__func__", func)  # a fixture defined in a class


def _unwrapped(func: Any) -> Any:
    try:
        return inspect.unwrap(func)
    except ValueError:  # a __wrapped__ cycle
        return func


def fixture_loop_scope(
    fixturedef: Any, config: pytest.Config, mode: str, version: tuple[int, ...]
) -> Optional[LoopScope]:
    """The loop scope of an async fixture as pytest-asyncio resolves it; None for the others."""
    func = _function_of(fixturedef)
    if not getattr(func, "_force_asyncio_fixture", False):  # pytest_asyncio.fixture
        if mode != "auto":
            return None  # strict mode: pytest-asyncio leaves plain async fixtures alone
        original = _unwrapped(func)
        if not (inspect.iscoroutinefunction(original) or inspect.isasyncgenfunction(original)):
            return None
    explicit = getattr(func, "_loop_scope", None)
    default = _ini(config, "asyncio_default_fixture_loop_scope")
    if default and default != _MATCH_FIXTURE_SCOPE:
        fallback = LoopScope(default, "asyncio_default_fixture_loop_scope")
    else:
        fallback = LoopScope(fixturedef.scope, "its fixture scope")
    if not explicit:
        found = fallback
    elif (0, 24) <= version < (1, 1) and explicit == fallback.scope:
        # These versions write the loop scope they resolved back onto the fixture function
        # at collection: equal to the fallback, it may have come from either.
        found = LoopScope(explicit, f"its loop_scope argument or {fallback.source}")
    else:
        found = LoopScope(explicit, "its loop_scope argument")
    return found if found.scope in SCOPES else None
