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
# Kept by the pytest plugin's pytest_fixture_setup wrapper: (pytest's FixtureDef, its
# function) of each fixture being set up now, innermost last (a fixture may request another
# while it runs).  The function is taken on entry: anyio's plugin swaps in a wrapper of its own.
fixtures_in_setup: list[tuple[Any, Any]] = []


def current_test() -> Optional[str]:
    """The pytest node id and phase running now, e.g. ``tests/test_a.py::test_x (call)``."""
    return os.environ.get("PYTEST_CURRENT_TEST") if in_pytest else None


def current_fixture() -> Optional[str]:
    """The fixture being set up now, as messages name it: ``session-scoped fixture 'engine'
    at tests/conftest.py:12``; None outside a fixture's setup (one list test: cheap)."""
    if not fixtures_in_setup:
        return None
    return describe_fixture(*fixtures_in_setup[-1])


def describe_fixture(fixturedef: Any, func: Any) -> str:
    import contextlib
    import inspect

    from ._sites import display_path

    func = getattr(func, "__func__", func)  # a fixture defined in a class
    with contextlib.suppress(ValueError):  # a __wrapped__ cycle
        func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    at = f" at {display_path(code.co_filename, rootdir)}:{code.co_firstlineno}" if code else ""
    return f"{fixturedef.scope}-scoped fixture {fixturedef.argname!r}{at}"


def fixture_scope(described: Optional[str]) -> Optional[str]:
    """The scope in a ``describe_fixture`` text (``session``), or None."""
    if not described or "-scoped fixture " not in described:
        return None
    return described.split("-scoped fixture ", 1)[0]
