"""LG105: an async fixture and the tests using it on different pytest-asyncio loop scopes.

pytest-asyncio runs each async test and each async fixture on the loop of its *loop scope*:
one loop for the session, one per package, module or class, one per test.  A fixture on the
session's loop that yields a pooled engine, a pool or a connection hands the tests something
bound to that loop; tests on their own loops then fail at their first query (scenario 2 of
the notes).  This module finds the mismatch before any test body runs:

- at collection (``pytest_collection_modifyitems``, last), each async test's loop scope is
  compared with the loop scopes of the async fixtures in its closure, read the way the
  installed pytest-asyncio reads them: the ``asyncio`` marker's ``loop_scope`` (``scope``
  before 0.24), ``asyncio_default_test_loop_scope`` (0.26+), the fixture function's
  ``_loop_scope`` attribute set by ``pytest_asyncio.fixture(loop_scope=...)`` (0.24+),
  ``asyncio_default_fixture_loop_scope`` and the fixture's own scope.  Anything missing or
  unexpected makes a scope "unknown", and unknown scopes are never reported;
- whether the fixture's value is bound to a loop is only known once it exists: at the end
  of the setup of the first test that uses it (a ``pytest_runtest_setup`` wrapper, still in
  the setup phase) or, when it was set up for an earlier test, at the start of the next
  test's setup.  Only values that belong to one loop
  count: pooled SQLAlchemy ``AsyncEngine`` (not ``NullPool``), ``AsyncConnection``,
  ``AsyncSession`` and ``async_sessionmaker`` bound to those, asyncpg and psycopg pools and
  connections, also inside a tuple, list or dict.  A fixture yielding anything else is silent.
  Annotations alone decide nothing: a fixture annotated ``AsyncEngine`` may well build a
  NullPool engine, which crosses loops legitimately.

Each (fixture, fixture loop scope, test loop scope) is reported once, as a
``LoopScopeMismatchWarning`` in pytest's warnings summary, pointing at the fixture, and as the
record ``loopguard.loop_scope_mismatch`` (structlog and ``LOOPGUARD_LOG_FILE``).  The warning
says what will happen to the tests that use the value, for its kind and loopguard's mode
(``OUTCOMES``).  Where pytest-asyncio has a loop-scope warning of its own
(``PytestAsyncioLoopScopeMismatchWarning``, planned for its 2.0 line), that warning is not
shown again for the fixtures reported here; it stays for the others.
pytest-asyncio older than 0.23 has a single ``event_loop`` and no loop scopes: nothing to
compare.  The plugin object is registered only when loopguard is active.
"""

from __future__ import annotations

import functools
import re
import sys
import warnings
from collections.abc import Generator
from typing import Any, NamedTuple, Optional

import pytest

from . import _context, _pytest_loops, _sites
from ._asyncio_loop_scopes import (
    LoopScope,
    _function_of,
    _unwrapped,
    asyncio_mode,
    asyncio_plugin_version,
    default_test_loop_scope,
    fixture_loop_scope,
    loop_scope_of_test,
)
from ._emit import emit_fields
from ._errors import LoopScopeMismatchWarning, background
from ._loop_bound_values import (
    ASYNCPG,
    ASYNCPG_CONNECTION,
    ENGINE,
    OTHER,
    PSYCOPG_CONNECTION,
    Bound,
    bound_to_loop,
)
from ._pytest_loops import SCOPES, SUPPORTED, name_loops_of, setup_wrapper, wrapper
from ._state import STATE

LG105 = "LG105"
_MAX_LISTED_TESTS = 3
_SCOPES_PLUGIN = "loopguard-loop-scopes"
_fixtures_in_setup = _context.fixtures_in_setup  # the list itself: appended to, never rebound


class Use(NamedTuple):
    """A test on one loop scope using an async fixture on another."""

    fixturedef: Any
    fixture: LoopScope
    test: LoopScope

    @property
    def key(self) -> tuple[int, str, str]:
        return (id(self.fixturedef), self.fixture.scope, self.test.scope)


# -- the message ---------------------------------------------------------------------------


def _scope_text(scope: LoopScope) -> str:
    return f'loop_scope="{scope.scope}" ({scope.source})'


def fixture_site(fixturedef: Any) -> Optional[tuple[str, int]]:
    """The fixture function's file and first line, or None."""
    code = getattr(_unwrapped(_function_of(fixturedef)), "__code__", None)
    if code is None:
        return None
    return code.co_filename, code.co_firstlineno


def _fixes(use: Use, version: tuple[int, ...]) -> str:
    """The two ways out, spelled for the installed pytest-asyncio."""
    fixture, test = use.fixture, use.test
    keyword = "loop_scope" if version >= (0, 24) else "scope"  # the marker's, before 0.24
    on_fixture_loop = f'@pytest.mark.asyncio({keyword}="{fixture.scope}") on them'
    if version >= (0, 26):
        on_fixture_loop += f", or asyncio_default_test_loop_scope = {fixture.scope} in the ini"
    if version >= (0, 24):
        arguments = f'loop_scope="{test.scope}"'
        if SCOPES.index(use.fixturedef.scope) > SCOPES.index(test.scope):
            arguments = f'scope="{test.scope}", {arguments}'  # a loop scope >= the scope
        on_test_loop = f"@pytest_asyncio.fixture({arguments})"
        if "asyncio_default_fixture_loop_scope" in fixture.source:
            on_test_loop += f", or asyncio_default_fixture_loop_scope = {test.scope}"
    else:  # 0.23: an async fixture runs on the loop of its own scope
        on_test_loop = f'@pytest_asyncio.fixture(scope="{test.scope}")'
    return (
        f"run the tests on the fixture's loop ({on_fixture_loop}), or give the fixture the "
        f"tests' loop scope ({on_test_loop})."
    )


_DIFFERENT_LOOP = "a RuntimeError about a Future attached to a different loop"
# What the tests' first use of the value does, by its kind and loopguard's mode.
OUTCOMES = {
    (ENGINE, "raise"): "each of them that uses it fails at its first query with "
    "LoopMismatchError (LG101), stopped before any I/O; the fixture's own use of it goes on "
    "working.",
    (ENGINE, "warn"): "at each one's first query loopguard warns (LG101), closes the "
    "connections of the other loop without I/O and moves the engine to the test's loop: the "
    "tests pass, but every test opens new connections and leaves them behind when its loop "
    "closes (LG106).",
    (ASYNCPG, "raise"): "each of them that uses it fails at its first use with "
    "LoopMismatchError (LG103), stopped before any I/O.",
    (ASYNCPG, "warn"): "at each one's first use loopguard warns (LG103), then asyncpg's own "
    f"error fails the test ({_DIFFERENT_LOOP}).",
    ASYNCPG_CONNECTION: "each of them that uses it fails at its first statement on it "
    f"(asyncpg: {_DIFFERENT_LOOP}).",
    PSYCOPG_CONNECTION: "psycopg does its I/O on whichever loop awaits it, so their queries "
    "work, but its lock belongs to the first loop on which two tasks waited for it: "
    "concurrent use on another loop fails (RuntimeError: ... is bound to a different event "
    "loop).",
    OTHER: "loopguard does not check it: whether their first use of it fails depends on what "
    "in it waits on the fixture's loop.",
}


def outcome(kind: str, mode: Optional[str]) -> str:
    """What happens to the tests that use a value of ``kind``, in loopguard's ``mode``."""
    return OUTCOMES.get((kind, mode or "raise")) or OUTCOMES.get(kind) or OUTCOMES[OTHER]


def format_message(
    use: Use,
    value: Bound,
    tests: list[str],
    fixture_at: Optional[str],
    version: tuple[int, ...],
    mode: Optional[str] = "raise",
) -> str:
    fixture, test = use.fixture, use.test
    name = use.fixturedef.argname
    first, more = tests[0], len(tests) - 1
    who = f"{first} runs" if not more else f"{first} and {more} more test{'s' * (more > 1)} run"
    relation = "wider" if SCOPES.index(fixture.scope) > SCOPES.index(test.scope) else "narrower"
    listed = ", ".join(tests[:_MAX_LISTED_TESTS])
    if len(tests) > _MAX_LISTED_TESTS:
        listed += f" and {len(tests) - _MAX_LISTED_TESTS} more"
    lines = [
        f"fixture {name!r} yields {value.text} from pytest-asyncio's {fixture.scope}-scoped "
        f"loop, but {who} on {test.scope}-scoped loops: {outcome(value.kind, mode)}",
        f"  fixture:       {name}{f' at {fixture_at}' if fixture_at else ''}, "
        f"{_scope_text(fixture)}, {relation} than the tests'",
        f"  tests:         {listed}, {_scope_text(test)}",
        f"  fix:           {_fixes(use, version)}",
        "  " + background(LG105, "warning"),
    ]
    return "\n".join(lines)


# -- the plugin ----------------------------------------------------------------------------


class LoopScopeCheck:
    """Plugin: compare loop scopes at collection, report loop-bound values before tests run,
    and name pytest-asyncio's loops as their fixtures make them (``_pytest_loops``)."""

    def __init__(self) -> None:
        self._fixture_scopes: dict[int, tuple[Any, Optional[LoopScope]]] = {}
        self._tests: dict[tuple[int, str, str], list[str]] = {}  # Use.key -> node ids
        self._reported: set[tuple[int, str, str]] = set()
        # node id -> the fixtures LG105 reported for it (pytest-asyncio's own warning about
        # them is not shown again: _DeduplicatedAsyncioWarning)
        self.reported_fixtures: dict[str, set[str]] = {}
        self._version: tuple[int, ...] = (0,)  # pytest-asyncio's, read at collection
        # id(item) -> (item, its uses), for the tests that have any: a dict read per test's
        # setup (item.stash.get raises and catches a KeyError for every other test)
        self._uses_of: dict[int, tuple[pytest.Item, list[Use]]] = {}
        # (id(parent node), test loop scope, fixture closure) -> the uses: the tests of one
        # module or class with the same fixtures resolve them to the same definitions.
        self._uses_by_closure: dict[tuple[int, LoopScope, tuple[str, ...]], list[Use]] = {}

    @pytest.hookimpl(trylast=True)  # after deselection (-k, -m) and reordering
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        version = asyncio_plugin_version(config)
        if version is None or version < (0, 23):  # before 0.23: one event_loop, no scopes
            return
        self._version = version
        import pytest_asyncio

        _register_deduplication(config, self)
        mode = asyncio_mode(config)
        default_test_scope = default_test_loop_scope(config)
        for item in items:
            if not pytest_asyncio.is_async_test(item):
                continue
            uses = self._uses(item, config, mode, version, default_test_scope)
            if uses:
                self._uses_of[id(item)] = (item, uses)
                for use in uses:
                    self._tests.setdefault(use.key, []).append(item.nodeid)

    def _uses(
        self,
        item: pytest.Item,
        config: pytest.Config,
        mode: str,
        version: tuple[int, ...],
        default_test_scope: Optional[LoopScope],
    ) -> list[Use]:
        test = loop_scope_of_test(item, config, default_test_scope)
        info = getattr(item, "_fixtureinfo", None)
        names = getattr(info, "names_closure", None)
        definitions = getattr(info, "name2fixturedefs", None)
        if test is None or names is None or definitions is None:
            return []
        key = (id(item.parent), test, tuple(names))
        known_uses = self._uses_by_closure.get(key)
        if known_uses is not None:
            return known_uses  # shared by those tests: read, never changed
        uses: list[Use] = []
        self._uses_by_closure[key] = uses
        for name in names:
            fixturedefs = definitions.get(name)
            if not fixturedefs:
                continue
            fixturedef = fixturedefs[-1]  # the closest definition is the one used
            known = self._fixture_scopes.get(id(fixturedef))
            if known is None:
                known = (fixturedef, fixture_loop_scope(fixturedef, config, mode, version))
                self._fixture_scopes[id(fixturedef)] = known
            fixture = known[1]
            if fixture is not None and fixture.scope != test.scope:
                uses.append(Use(fixturedef, fixture, test))
        return uses

    if setup_wrapper is not None:

        @setup_wrapper
        def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
            # One wrapper around each test's setup, not one around every fixture's (~4 per
            # test): fixtures set up for an earlier test are checked before this setup, the
            # others once it is done, still in the setup phase, before the test body runs.
            known = self._uses_of.get(id(item))
            uses = known[1] if known is not None and known[0] is item else None
            if uses is not None:  # most tests have none
                self._check_values(item, uses)
            _fixtures_in_setup.clear()
            _pytest_loops.setting_up = item
            try:
                return (yield)
            finally:
                _pytest_loops.setting_up = None
                _fixtures_in_setup.clear()
                name_loops_of(item)
                if uses is not None:
                    self._check_values(item, uses)

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any) -> None:
        # What the fixture creates is created by it (_registry.Origin reads the list).  A
        # plain hook: a wrapper around every fixture's setup costs several times more.
        entry = (fixturedef, fixturedef.func)
        _fixtures_in_setup.append(entry)
        if _pytest_loops.setting_up is None:
            # Set up outside a test's setup (getfixturevalue in the test body): its entry
            # goes with its teardown, which resets what marks it as done.  (Not a
            # pytest_runtest_teardown hook emptying the list: ~50 bytecodes per test.)
            fixturedef.addfinalizer(functools.partial(_context.forget_fixture, entry))

    def _check_values(self, item: pytest.Item, uses: Any) -> None:
        for use in uses:
            cached = getattr(use.fixturedef, "cached_result", None)
            if cached is not None and cached[2] is None:
                self._check(item, use, cached[0])

    def _check(self, item: pytest.Item, use: Use, value: Any) -> None:
        if use.key in self._reported:
            return
        try:
            bound = bound_to_loop(value)
        except Exception:  # a value whose attributes misbehave: nothing to say about it
            bound = None
        if bound is None:
            return
        self._reported.add(use.key)
        tests = self._tests.get(use.key) or [item.nodeid]
        for nodeid in tests:
            self.reported_fixtures.setdefault(nodeid, set()).add(use.fixturedef.argname)
        site = fixture_site(use.fixturedef)
        fixture_at = f"{_sites.display_path(site[0], _context.rootdir)}:{site[1]}" if site else None
        message = format_message(use, bound, tests, fixture_at, self._version, STATE.mode)
        record: dict[str, Any] = {
            "code": LG105,
            "action": "warned",
            "fixture": use.fixturedef.argname,
            "fixture_at": fixture_at,
            "fixture_loop_scope": use.fixture.scope,
            "test_loop_scope": use.test.scope,
            "value": bound.text,
            "used_during": _context.current_test(),
            "tests": len(tests),
        }
        # Also to LOOPGUARD_LOG_FILE, for `loopguard report`; the plugin's own summary is
        # about engines and pools, and the warnings summary shows this one already.
        emit_fields(record, listeners=False)
        warning = LoopScopeMismatchWarning(message)
        if site is not None:
            warnings.warn_explicit(warning, LoopScopeMismatchWarning, site[0], site[1])
        else:
            warnings.warn(warning, stacklevel=2)

    def __repr__(self) -> str:
        return f"<loopguard: loop scopes of {len(self._tests)} fixture/test pairs>"


# pytest-asyncio's own loop-scope warning, planned for its next major line (2.0; its pull
# request #1516): emitted from its pytest_pyfunc_call for every async fixture whose loop
# scope differs from the test's, whatever the fixture yields.
ASYNCIO_WARNING = "PytestAsyncioLoopScopeMismatchWarning"
_DEDUPLICATION_PLUGIN = "loopguard-asyncio-warning"


class _DeduplicatedAsyncioWarning:
    """Plugin, registered only where pytest-asyncio has its loop-scope warning: for the
    fixtures LG105 reported for a test, pytest-asyncio's warning is not shown again (LG105
    says what the fixture yields and what will happen); for the others it stays."""

    def __init__(self, check: LoopScopeCheck, category: type[Warning]) -> None:
        self._check = check
        self._category = category

    if wrapper is not None:  # registered only where new-style wrappers exist

        @wrapper
        def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
            names = self._check.reported_fixtures.get(item.nodeid)
            if not names:
                return (yield)
            # Filters set inside the call phase go with it (catch_warnings restores them).
            with warnings.catch_warnings():
                for name in names:
                    pattern = f".*fixture {re.escape(repr(name))}"
                    warnings.filterwarnings("ignore", pattern, self._category)
                return (yield)

    def __repr__(self) -> str:
        return f"<loopguard: LG105 over {self._category.__name__}>"


def asyncio_warning_class() -> Optional[type[Warning]]:
    """pytest-asyncio's loop-scope warning class, where the installed pytest-asyncio has it."""
    found = getattr(sys.modules.get("pytest_asyncio"), ASYNCIO_WARNING, None)
    return found if isinstance(found, type) and issubclass(found, Warning) else None


def _register_deduplication(config: pytest.Config, check: LoopScopeCheck) -> None:
    category = asyncio_warning_class()
    manager = config.pluginmanager
    if category is not None and not manager.has_plugin(_DEDUPLICATION_PLUGIN):
        manager.register(_DeduplicatedAsyncioWarning(check, category), _DEDUPLICATION_PLUGIN)


def register(config: pytest.Config) -> None:
    """Register the plugin that names pytest-asyncio's loops and compares loop scopes:
    loopguard is active in this run."""
    manager = config.pluginmanager
    if not SUPPORTED or manager.has_plugin(_SCOPES_PLUGIN):
        return
    manager.register(LoopScopeCheck(), _SCOPES_PLUGIN)
