"""What is running right now: the test, the fixture being set up, its root directory, the
xdist worker."""

from __future__ import annotations

import os
from typing import Any, Optional

# Set by the pytest plugin to the rootdir so paths print relative to it.
rootdir: Optional[str] = None
# Set by the pytest plugin: PYTEST_CURRENT_TEST is only meaningful in pytest's own process
# (a script started by a test inherits the variable and would blame that test).
in_pytest = False
# Set by the pytest plugin in a pytest-xdist worker: its id ("gw0"), logged with each record.
worker: Optional[str] = None
# Kept by the pytest plugin's pytest_fixture_setup hook (a plain hook, not a wrapper: ~4
# fixtures per test): (pytest's FixtureDef, its function) of each fixture whose setup began,
# innermost last (a fixture may request another while it runs).  An entry is done once its
# FixtureDef has a cached_result (pytest sets it when the setup ends, also on an error):
# done entries are dropped when read, the plugin empties the list after each setup, and
# the entry of a fixture set up outside a setup goes with its teardown (forget_fixture).
# The function is taken on entry: anyio's plugin swaps in a wrapper of its own around the
# call.
fixtures_in_setup: list[tuple[Any, Any]] = []


_VARIABLE = "PYTEST_CURRENT_TEST"
# os.environ.get() costs three Python calls (Mapping.get, __getitem__, encodekey) and is
# asked a few times per test (each engine, connection and loop): CPython's os.environ keeps
# the encoded variables in a dict, read here directly while os.environ is that object.
_environ = os.environ
_data = getattr(_environ, "_data", None)
_key = _environ.encodekey(_VARIABLE) if hasattr(_environ, "encodekey") else None
_decode = getattr(_environ, "decodevalue", None)
_raw_get = _data.get if _data is not None and _decode is not None else None
# os.environ while it is the object read directly above; never os.environ otherwise.
_direct_environ: Any = _environ if _raw_get is not None else object()
# The last raw value read and its decoding (decodevalue is a Python function): pytest sets
# the variable once per phase, and it is read several times in each.
_last_raw: Any = None
_last_test: Optional[str] = None


def current_test() -> Optional[str]:
    """The pytest node id and phase running now, e.g. ``tests/test_a.py::test_x (call)``."""
    global _last_raw, _last_test
    if not in_pytest:
        return None
    if os.environ is _direct_environ:
        raw = _raw_get(_key)  # type: ignore[misc]
        if raw is not _last_raw:  # None only before the first value (and _last_test too)
            if raw is None:
                return None
            _last_test = _decode(raw)  # type: ignore[misc]
            _last_raw = raw
        return _last_test
    return os.environ.get(_VARIABLE)


def fixture_in_setup() -> Optional[tuple[Any, Any]]:
    """(FixtureDef, function) of the fixture being set up now, or None."""
    while fixtures_in_setup:
        entry = fixtures_in_setup[-1]
        if getattr(entry[0], "cached_result", None) is None:
            return entry
        fixtures_in_setup.pop()
    return None


def forget_fixture(entry: tuple[Any, Any]) -> None:
    """Drop ``entry`` (a fixture set up outside a test's setup) once it is torn down: pytest
    then resets its cached_result, which would make it look set up again."""
    for index, found in enumerate(fixtures_in_setup):
        if found is entry:
            del fixtures_in_setup[index]
            return


def current_fixture() -> Optional[str]:
    """The fixture being set up now, as messages name it: ``session-scoped fixture 'engine'
    at tests/conftest.py:12``; None outside a fixture's setup (one list test: cheap)."""
    if not fixtures_in_setup:
        return None
    entry = fixture_in_setup()
    return describe_fixture(*entry) if entry is not None else None


def describe_fixture(fixturedef: Any, func: Any) -> str:
    import contextlib
    import inspect

    from ._sites import display_path

    func = getattr(func, "__func__", func)  # a fixture defined in a class
    with contextlib.suppress(ValueError):  # a __wrapped__ cycle
        func = inspect.unwrap(func)
    func = _unwrap_anyio(func)
    code = getattr(func, "__code__", None)
    at = f" at {display_path(code.co_filename, rootdir)}:{code.co_firstlineno}" if code else ""
    return f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r}{at}"


def _unwrap_anyio(func: Any) -> Any:
    """anyio's plugin sets an async fixture up through a closure of its own over the
    fixture's function (no ``__wrapped__``), swapped in around the setup: that function."""
    if getattr(func, "__module__", None) != "anyio.pytest_plugin":
        return func
    code, closure = getattr(func, "__code__", None), getattr(func, "__closure__", None)
    if code is None or not closure or "func" not in code.co_freevars:
        return func
    inner = closure[code.co_freevars.index("func")].cell_contents
    return getattr(inner, "__func__", inner)


def fixture_scope(described: Optional[str]) -> Optional[str]:
    """The scope in a ``describe_fixture`` text (``session``), or None."""
    if not described or "-scoped fixture " not in described:
        return None
    return described.split("-scoped fixture ", 1)[0]
