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

import inspect
import re
import sys
import warnings
from collections.abc import Generator
from typing import Any, NamedTuple, Optional

import pytest

from . import _context, _pytest_loops, _sites
from ._emit import emit_fields
from ._errors import LoopScopeMismatchWarning, background
from ._pytest_loops import SCOPES, SUPPORTED, name_loops_of, setup_wrapper, wrapper
from ._state import STATE

LG105 = "LG105"
# asyncio_default_fixture_loop_scope's value for "the fixture's own scope" (recent 1.x).
_MATCH_FIXTURE_SCOPE = "fixture-scope"
_MAX_LISTED_TESTS = 3
_MAX_CONTAINER_ITEMS = 16
_SCOPES_PLUGIN = "loopguard-loop-scopes"


class LoopScope(NamedTuple):
    scope: str
    source: str  # where the value came from, for the message


class Use(NamedTuple):
    """A test on one loop scope using an async fixture on another."""

    fixturedef: Any
    fixture: LoopScope
    test: LoopScope

    @property
    def key(self) -> tuple[int, str, str]:
        return (id(self.fixturedef), self.fixture.scope, self.test.scope)


_uses_key = pytest.StashKey[list[Use]]()


# -- what the installed pytest-asyncio says ------------------------------------------------


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


def loop_scope_of_test(item: pytest.Item, config: pytest.Config) -> Optional[LoopScope]:
    """The loop scope pytest-asyncio runs ``item`` on, or None (not an asyncio test, unknown)."""
    marker = item.get_closest_marker("asyncio")
    if marker is None:
        return None
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    source = "its asyncio marker"
    if not scope:
        scope = _ini(config, "asyncio_default_test_loop_scope")  # 0.26+
        source = "asyncio_default_test_loop_scope"
        if scope is None:
            scope, source = "function", "pytest-asyncio's default"
    return LoopScope(scope, source) if scope in SCOPES else None


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


# -- what a fixture's value is bound to ---------------------------------------------------


def _instance_of(value: Any, module_name: str, *names: str) -> bool:
    """``isinstance`` against classes of a module, only if something imported it already."""
    module = sys.modules.get(module_name)
    if module is None:
        return False
    classes = tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))
    return bool(classes) and isinstance(value, classes)


class Bound(NamedTuple):
    """What in a fixture's value belongs to one event loop: in words, and which kind of
    thing it is (the kind decides what happens to the tests, ``OUTCOMES``)."""

    text: str  # "a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)"
    kind: str  # ENGINE, ASYNCPG, ASYNCPG_CONNECTION, PSYCOPG_CONNECTION or OTHER

    def within(self, prefix: str) -> Bound:
        return Bound(f"{prefix}{self.text}", self.kind)


# The kinds of loop-bound values, by what their first use on another loop does.
ENGINE = "engine"  # checked out from its pool: LG101
ASYNCPG = "asyncpg"  # a raw asyncpg Pool or Connection: LG103
ASYNCPG_CONNECTION = "asyncpg-connection"  # a SQLAlchemy connection held open, over asyncpg
PSYCOPG_CONNECTION = "psycopg-connection"  # psycopg: its I/O follows the running loop
OTHER = "other"


def loop_bound(value: Any, nested: bool = False) -> Optional[str]:
    """What in ``value`` belongs to one event loop, in words; None when nothing does."""
    bound = bound_to_loop(value, nested)
    return bound.text if bound is not None else None


def bound_to_loop(value: Any, nested: bool = False) -> Optional[Bound]:
    """What in ``value`` belongs to one event loop; None when nothing does.

    ``a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)``, ``an asyncpg Pool``, ...
    A NullPool engine opens a new connection on the running loop at every checkout: it may
    cross loops, so it (and sessions and sessionmakers bound to it) are not loop-bound.
    """
    asa = "sqlalchemy.ext.asyncio"
    if _instance_of(value, asa, "AsyncEngine"):
        pool = value.sync_engine.pool
        if _instance_of(pool, "sqlalchemy.pool", "NullPool"):
            return None
        return Bound(f"a pooled SQLAlchemy AsyncEngine ({type(pool).__name__})", ENGINE)
    if _instance_of(value, asa, "AsyncConnection"):
        if getattr(value, "sync_connection", None) is None:  # not connected yet
            return bound_to_loop(value.engine, nested)
        driver = str(getattr(getattr(value.engine, "dialect", None), "driver", ""))
        kind = {"asyncpg": ASYNCPG_CONNECTION, "psycopg": PSYCOPG_CONNECTION}.get(driver, OTHER)
        return Bound("a SQLAlchemy AsyncConnection", kind)
    if _instance_of(value, asa, "AsyncSession"):
        bind = getattr(value, "bind", None)  # SQLAlchemy 2.0 sets it only when given
        bound = bound_to_loop(bind, True) if bind is not None else None
        return bound.within("a SQLAlchemy AsyncSession bound to ") if bound else None
    kw = getattr(value, "kw", None)
    if type(value).__name__ in ("async_sessionmaker", "sessionmaker") and isinstance(kw, dict):
        bind = kw.get("bind")
        bound = bound_to_loop(bind, True) if bind is not None else None
        return bound.within(f"an {type(value).__name__} bound to ") if bound else None
    if _instance_of(value, "asyncpg", "Pool"):
        return Bound("an asyncpg Pool", ASYNCPG)
    if _instance_of(value, "asyncpg", "Connection"):
        return Bound("an asyncpg Connection", ASYNCPG)
    if _instance_of(value, "asyncpg.pool", "PoolConnectionProxy"):
        return Bound("an asyncpg Connection acquired from a Pool", ASYNCPG)
    if _instance_of(value, "psycopg", "AsyncConnection"):
        return Bound("a psycopg AsyncConnection", PSYCOPG_CONNECTION)
    if _instance_of(value, "psycopg_pool", "AsyncConnectionPool"):
        return Bound("a psycopg_pool AsyncConnectionPool", OTHER)
    if not nested and isinstance(value, (tuple, list, dict)):
        items = list(value.values() if isinstance(value, dict) else value)
        for element in items[:_MAX_CONTAINER_ITEMS]:
            bound = bound_to_loop(element, True)
            if bound:
                return bound.within(f"a {type(value).__name__} holding ")
    return None


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
        for item in items:
            if not pytest_asyncio.is_async_test(item):
                continue
            uses = self._uses(item, config, mode, version)
            if uses:
                item.stash[_uses_key] = uses
                for use in uses:
                    self._tests.setdefault(use.key, []).append(item.nodeid)

    def _uses(
        self, item: pytest.Item, config: pytest.Config, mode: str, version: tuple[int, ...]
    ) -> list[Use]:
        test = loop_scope_of_test(item, config)
        info = getattr(item, "_fixtureinfo", None)
        names = getattr(info, "names_closure", None)
        definitions = getattr(info, "name2fixturedefs", None)
        if test is None or names is None or definitions is None:
            return []
        uses = []
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
            uses = item.stash.get(_uses_key, ())
            self._check_values(item, uses)
            _context.fixtures_in_setup.clear()
            _pytest_loops.setting_up = item
            try:
                return (yield)
            finally:
                _pytest_loops.setting_up = None
                _context.fixtures_in_setup.clear()
                name_loops_of(item)
                self._check_values(item, uses)

    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any) -> None:
        # What the fixture creates is created by it (_registry.Origin reads the list).  A
        # plain hook: a wrapper around every fixture's setup costs several times more.
        _context.fixtures_in_setup.append((fixturedef, fixturedef.func))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self) -> None:
        # Fixtures requested during the test body (getfixturevalue) are done by now, and
        # their finalizers reset what marks them as done.
        _context.fixtures_in_setup.clear()

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
