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
- whether the fixture's value is bound to a loop is only known once it exists: right after
  the fixture is set up (a ``pytest_fixture_setup`` wrapper) or, when it was set up for an
  earlier test, at the start of the next test's setup.  Only values that belong to one loop
  count: pooled SQLAlchemy ``AsyncEngine`` (not ``NullPool``), ``AsyncConnection``,
  ``AsyncSession`` and ``async_sessionmaker`` bound to those, asyncpg and psycopg pools and
  connections, also inside a tuple, list or dict.  A fixture yielding anything else is silent.
  Annotations alone decide nothing: a fixture annotated ``AsyncEngine`` may well build a
  NullPool engine, which crosses loops legitimately.

Each (fixture, fixture loop scope, test loop scope) is reported once, as a
``LoopScopeMismatchWarning`` in pytest's warnings summary, pointing at the fixture, and as the
record ``loopguard.loop_scope_mismatch`` (structlog and ``LOOPGUARD_LOG_FILE``).
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

from . import _context, _sites
from ._emit import emit_fields
from ._errors import LoopScopeMismatchWarning, background
from ._pytest_loops import SCOPES, SUPPORTED, fixture_wrapper, name_loop_fixture

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


def loop_bound(value: Any, nested: bool = False) -> Optional[str]:
    """What in ``value`` belongs to one event loop, in words; None when nothing does.

    ``a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)``, ``an asyncpg Pool``, ...
    A NullPool engine opens a new connection on the running loop at every checkout: it may
    cross loops, so it (and sessions and sessionmakers bound to it) are not loop-bound.
    """
    asa = "sqlalchemy.ext.asyncio"
    if _instance_of(value, asa, "AsyncEngine"):
        pool = value.sync_engine.pool
        if _instance_of(pool, "sqlalchemy.pool", "NullPool"):
            return None
        return f"a pooled SQLAlchemy AsyncEngine ({type(pool).__name__})"
    if _instance_of(value, asa, "AsyncConnection"):
        if getattr(value, "sync_connection", None) is None:  # not connected yet
            return loop_bound(value.engine, nested)
        return "a SQLAlchemy AsyncConnection"
    if _instance_of(value, asa, "AsyncSession"):
        bind = getattr(value, "bind", None)  # SQLAlchemy 2.0 sets it only when given
        bound = loop_bound(bind, True) if bind is not None else None
        return f"a SQLAlchemy AsyncSession bound to {bound}" if bound else None
    kw = getattr(value, "kw", None)
    if type(value).__name__ in ("async_sessionmaker", "sessionmaker") and isinstance(kw, dict):
        bind = kw.get("bind")
        bound = loop_bound(bind, True) if bind is not None else None
        return f"an {type(value).__name__} bound to {bound}" if bound else None
    if _instance_of(value, "asyncpg", "Pool"):
        return "an asyncpg Pool"
    if _instance_of(value, "asyncpg", "Connection"):
        return "an asyncpg Connection"
    if _instance_of(value, "asyncpg.pool", "PoolConnectionProxy"):
        return "an asyncpg Connection acquired from a Pool"
    if _instance_of(value, "psycopg", "AsyncConnection"):
        return "a psycopg AsyncConnection"
    if _instance_of(value, "psycopg_pool", "AsyncConnectionPool"):
        return "a psycopg_pool AsyncConnectionPool"
    if not nested and isinstance(value, (tuple, list, dict)):
        items = list(value.values() if isinstance(value, dict) else value)
        for element in items[:_MAX_CONTAINER_ITEMS]:
            bound = loop_bound(element, True)
            if bound:
                return f"a {type(value).__name__} holding {bound}"
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


def format_message(
    use: Use,
    value: str,
    tests: list[str],
    fixture_at: Optional[str],
    version: tuple[int, ...],
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
        f"fixture {name!r} yields {value} from pytest-asyncio's {fixture.scope}-scoped loop, "
        f"but {who} on {test.scope}-scoped loops: what it yields belongs to the fixture's loop, "
        "so their first use of it fails (asyncpg: a RuntimeError about a Future on a different "
        "loop; loopguard: LoopMismatchError).",
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
        self._watched: dict[int, Any] = {}  # id -> fixturedef of every fixture in a Use
        self._tests: dict[tuple[int, str, str], list[str]] = {}  # Use.key -> node ids
        self._reported: set[tuple[int, str, str]] = set()
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

        mode = asyncio_mode(config)
        for item in items:
            if not pytest_asyncio.is_async_test(item):
                continue
            uses = self._uses(item, config, mode, version)
            if uses:
                item.stash[_uses_key] = uses
                for use in uses:
                    self._watched[id(use.fixturedef)] = use.fixturedef
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

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # Fixtures set up for an earlier test: their value is known before this test's setup.
        for use in item.stash.get(_uses_key, ()):
            cached = getattr(use.fixturedef, "cached_result", None)
            if cached is not None and cached[2] is None:
                self._check(item, use, cached[0])

    if fixture_wrapper is not None:

        @fixture_wrapper
        def pytest_fixture_setup(self, fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
            result = yield
            # Also names pytest-asyncio's loops (_pytest_loops): one wrapper around every
            # fixture setup instead of two (~55k instructions per test each, measured).
            name_loop_fixture(fixturedef, request, result)
            item = getattr(request, "_pyfuncitem", None)
            if id(fixturedef) in self._watched and item is not None:
                for use in item.stash.get(_uses_key, ()):
                    if use.fixturedef is fixturedef:
                        self._check(item, use, result)
            return result

    def _check(self, item: pytest.Item, use: Use, value: Any) -> None:
        if use.key in self._reported:
            return
        try:
            bound = loop_bound(value)
        except Exception:  # a value whose attributes misbehave: nothing to say about it
            bound = None
        if bound is None:
            return
        self._reported.add(use.key)
        site = fixture_site(use.fixturedef)
        fixture_at = f"{_sites.display_path(site[0], _context.rootdir)}:{site[1]}" if site else None
        tests = self._tests.get(use.key) or [item.nodeid]
        message = format_message(use, bound, tests, fixture_at, self._version)
        record: dict[str, Any] = {
            "code": LG105,
            "action": "warned",
            "fixture": use.fixturedef.argname,
            "fixture_at": fixture_at,
            "fixture_loop_scope": use.fixture.scope,
            "test_loop_scope": use.test.scope,
            "value": bound,
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


def register(config: pytest.Config) -> None:
    """Register the plugin that names pytest-asyncio's loops and compares loop scopes:
    loopguard is active in this run."""
    manager = config.pluginmanager
    if not SUPPORTED or manager.has_plugin(_SCOPES_PLUGIN):
        return
    manager.register(LoopScopeCheck(), _SCOPES_PLUGIN)
