"""Scenarios 1 and 2 the way older and newer stacks write them, each in its own nox session.

``tests/test_pytest_plugin.py`` writes its generated suites for the current stack (SQLAlchemy
2's ``async_sessionmaker``, pytest-asyncio's ``loop_scope=``).  Here the same two failures are
written in the idioms of three eras, and each era runs only where its stack is installed
(``noxfile.py`` has a session for each):

- SQLAlchemy 1.4's asyncio extension: ``sessionmaker(class_=AsyncSession)``, ``future=True``,
  a session-scoped fixture that owns its loop (works with every pytest-asyncio line);
- pytest-asyncio 0.21, the ``event_loop`` fixture era: strict mode with markers, tests that
  take ``event_loop`` and drive it with ``run_until_complete()``, and the era's recipe for
  session fixtures (a session-scoped ``event_loop`` override);
- pytest-asyncio 0.23, where an async fixture's scope is also its loop's scope;
- pytest-asyncio 1.x, one ``asyncio.Runner`` per loop scope: a module-scoped and a
  class-scoped runner next to function-scoped ones.

Scenario 1: a cached engine and a module-level session factory, each test on its own loop.
Scenario 2: an engine warmed by a wider-scoped fixture on its loop, tests on function loops.
Real pytest runs in a subprocess against the throwaway PostgreSQL, nothing mocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_pytest_plugin as plugin_tests
from test_pytest_plugin import (
    ASYNCPG_BUSY,
    ASYNCPG_DIFFERENT_LOOP,
    ASYNCPG_PROTOCOL_STATE,
    RunPytest,
    assert_silent,
    ini,
    line_of,
    write,
)
from teststack import PYTEST_ASYNCIO, SQLALCHEMY, describe

# The plugin tests' fixtures, the autouse one that cleans the environment included.
_clean_environment = plugin_tests._clean_environment
db_url = plugin_tests.db_url
run = plugin_tests.run

UNCAPTURED = ("-s", "-p", "no:logging")


def assert_no_asyncpg_fallout(result: pytest.RunResult) -> None:
    """No error of the kind loopguard pre-empts: in no failure (``E`` lines, the short
    summary) and nowhere on stderr.  Warnings that merely name the symptom don't count."""
    lines = [
        line
        for line in result.stdout.lines
        if line.startswith(("E ", "FAILED ", "ERROR ")) or "Error:" in line
    ]
    text = "\n".join(lines) + "\n" + result.stderr.str()
    for symptom in (ASYNCPG_DIFFERENT_LOOP, ASYNCPG_BUSY, ASYNCPG_PROTOCOL_STATE):
        assert symptom not in text, symptom


def assert_clean_teardown(result: pytest.RunResult) -> None:
    """dispose() on the owner loop after the last test: no error, no leak, no traceback."""
    stderr = result.stderr.str()
    for symptom in ("Exception closing connection", "Event loop is closed", "Traceback"):
        assert symptom not in stderr, symptom


# == SQLAlchemy 1.4 ===========================================================================

sqlalchemy_14 = pytest.mark.skipif(
    SQLALCHEMY >= (2, 0), reason=f"SQLAlchemy 1.4 idioms; installed: {describe('sqlalchemy')}"
)

SA14_DB_PY = """
    import os
    from functools import lru_cache

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import sessionmaker


    @lru_cache()
    def get_engine():
        return create_async_engine(os.environ["DATABASE_URL"], future=True, pool_size=5)


    SessionLocal = sessionmaker(get_engine(), class_=AsyncSession, expire_on_commit=False)
"""
SA14_DB_LINE = line_of(SA14_DB_PY, "return create_async_engine(")

SA14_TESTS_PY = """
    from sqlalchemy import text

    from app.db import SessionLocal, get_engine


    async def test_create_user():
        async with SessionLocal() as session:
            async with session.begin():
                assert (await session.execute(text("select 1"))).scalar() == 1


    async def test_list_users():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 2"))).scalar() == 2


    async def test_delete_user():
        async with get_engine().begin() as conn:
            assert (await conn.execute(text("select 3"))).scalar() == 3
"""


@pytest.fixture
def sa14_cached_suite(pytester: pytest.Pytester, db_url: str) -> Path:
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "app/__init__.py": "",
            "app/db.py": SA14_DB_PY,
            "tests/test_users.py": SA14_TESTS_PY,
        },
    )
    return pytester.path


@sqlalchemy_14
def test_sqlalchemy14_scenario1_unguarded_fails_inside_asyncpg(
    sa14_cached_suite: Path, run: RunPytest
) -> None:
    """The problem exists on 1.4 too: without loopguard the second test fails deep inside
    asyncpg with the cross-loop error."""
    result = run("--tb=short")
    result.assert_outcomes(passed=1, failed=2)
    assert ASYNCPG_DIFFERENT_LOOP in result.stdout.str()


@sqlalchemy_14
def test_sqlalchemy14_scenario1_raise_mode(sa14_cached_suite: Path, run: RunPytest) -> None:
    """1.4's sessionmaker(class_=AsyncSession) and engine.begin(): the two later tests fail
    with LoopMismatchError naming the lru_cache factory, before asyncpg sees anything."""
    result = run("--tb=short", "--loopguard")
    result.assert_outcomes(passed=1, failed=2)
    site = f"app/db.py:{SA14_DB_LINE} in get_engine"
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*, but "
            "its pooled connections belong to loop #*; stopped before any I/O.",
            "E     engine:        postgresql+asyncpg://*(AsyncAdaptedQueuePool)",
            f"E     created at:    {site} (outside any test, no event loop running)",
            "E     bound:         first connection opened during "
            "tests/test_users.py::test_create_user (call), at *, on loop #*, which is now closed",
            "E     used now:      during tests/test_users.py::test_list_users (call) *",
            "E   loopguard.LoopMismatchError: *",
            "E     used now:      during tests/test_users.py::test_delete_user (call) *",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"  LG101 {site}  *",
        ]
    )
    assert_no_asyncpg_fallout(result)


@sqlalchemy_14
def test_sqlalchemy14_scenario1_warn_mode_heals(sa14_cached_suite: Path, run: RunPytest) -> None:
    """Warn mode on 1.4: every test passes, two warnings, the pool follows each new loop."""
    result = run("--loopguard-mode=warn")
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(["*LoopMismatchWarning: SQLAlchemy AsyncEngine used on*"])
    assert_no_asyncpg_fallout(result)


# Scenario 2 with a session fixture that owns its loop: what suites did before loop_scope=,
# and what works with every pytest-asyncio line of the matrix.
OWN_LOOP_CONFTEST_PY = """
    import asyncio
    import os

    import pytest
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest.fixture(scope="session")
    def session_loop():
        loop = asyncio.new_event_loop()
        yield loop
        loop.close()


    async def warm(engine):
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))


    @pytest.fixture(scope="session")
    def engine(session_loop):
        engine = create_async_engine(os.environ["DATABASE_URL"], future=True, pool_size=5)
        session_loop.run_until_complete(warm(engine))
        yield engine
        session_loop.run_until_complete(engine.dispose())  # on the loop that owns the pool
"""
OWN_LOOP_ENGINE_LINE = line_of(OWN_LOOP_CONFTEST_PY, "engine = create_async_engine(")

OWN_LOOP_TESTS_PY = """
    {header}
    from sqlalchemy import text


    {marker}
    async def test_one(engine):
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar() == 1


    {marker}
    async def test_two(engine):
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 2"))).scalar() == 2
"""


def own_loop_suite(root: Path, *, strict: bool = False) -> None:
    """Scenario 2 with a session fixture on its own loop; ``strict``: markers, no auto mode."""
    tests = OWN_LOOP_TESTS_PY.format(
        header="import pytest\n" if strict else "",
        marker="@pytest.mark.asyncio" if strict else "",
    )
    config = ini().replace("asyncio_mode = auto", "asyncio_mode = strict") if strict else ini()
    write(
        root,
        {"pytest.ini": config, "conftest.py": OWN_LOOP_CONFTEST_PY, "test_engine.py": tests},
    )


def assert_scenario2_raised(result: pytest.RunResult) -> None:
    result.assert_outcomes(failed=2, errors=0)
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            f"E     created at:    conftest.py:{OWN_LOOP_ENGINE_LINE} in engine "
            "(during test_engine.py::test_one (setup), no event loop running)",
            "E     bound:         first connection opened during test_engine.py::test_one "
            "(setup), at conftest.py:* in warm, on loop #*, which is still open but not running",
            "E     used now:      during test_engine.py::test_one (call) *",
            "E     likely cause:  *still open but not running*",
            "E   loopguard.LoopMismatchError: *",
            "E     used now:      during test_engine.py::test_two (call) *",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            "    2 × raised; first bound during test_engine.py::test_one (setup)",
        ]
    )
    assert_no_asyncpg_fallout(result)
    assert_clean_teardown(result)


@sqlalchemy_14
def test_sqlalchemy14_scenario2_session_fixture_on_its_own_loop(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """1.4, a session fixture that warms the engine on its own (idle) loop: both tests fail
    with LoopMismatchError calling the owner loop idle; the fixture's dispose() on that loop
    stays clean."""
    own_loop_suite(pytester.path)
    assert_scenario2_raised(run("--tb=short", "--loopguard", *UNCAPTURED))


# == pytest-asyncio 0.21: the event_loop fixture era ========================================

event_loop_era = pytest.mark.skipif(
    PYTEST_ASYNCIO >= (0, 23),
    reason=f"pytest-asyncio 0.21 idioms; installed: {describe('pytest-asyncio')}",
)

# Portable across SQLAlchemy 1.4 to 2.1 (the 0.21 sessions of the matrix run all three).
ERA_DB_PY = """
    import os

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import sessionmaker

    engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=5)
    Session = sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
"""
ERA_DB_LINE = line_of(ERA_DB_PY, "engine = create_async_engine(")

EVENT_LOOP_TESTS_PY = """
    import asyncio

    import pytest
    from sqlalchemy import text

    from app.db import Session


    async def query(n):
        async with Session() as session:
            return (await session.execute(text(f"select {n}"))).scalar()


    @pytest.mark.asyncio
    async def test_create_user():
        assert await query(1) == 1


    @pytest.mark.asyncio
    async def test_list_users(event_loop):
        assert asyncio.get_running_loop() is event_loop  # the fixture's loop, new per test
        assert await query(2) == 2


    def test_delete_user(event_loop):  # a sync test driving the loop fixture by hand
        assert event_loop.run_until_complete(query(3)) == 3
"""


@pytest.fixture
def event_loop_suite(pytester: pytest.Pytester, db_url: str) -> Path:
    write(
        pytester.path,
        {
            # strict mode: the 0.21 default, every async test carries its marker
            "pytest.ini": ini().replace("asyncio_mode = auto", "asyncio_mode = strict"),
            "app/__init__.py": "",
            "app/db.py": ERA_DB_PY,
            "tests/test_users.py": EVENT_LOOP_TESTS_PY,
        },
    )
    return pytester.path


@event_loop_era
def test_event_loop_era_scenario1_raise_mode(event_loop_suite: Path, run: RunPytest) -> None:
    """Markers, a test taking ``event_loop`` and a sync test calling run_until_complete() on
    it: each gets a new function-scoped loop, so the second and third fail with
    LoopMismatchError (raised through run_until_complete() too)."""
    result = run("--tb=short", "--loopguard")
    result.assert_outcomes(passed=1, failed=2)
    site = f"app/db.py:{ERA_DB_LINE} in <module>"
    result.stdout.fnmatch_lines(
        [
            "*test_list_users*",
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            f"E     created at:    {site} (outside any test, no event loop running)",
            "E     bound:         first connection opened during "
            "tests/test_users.py::test_create_user (call), at *, on loop #*, which is now closed",
            "E     used now:      during tests/test_users.py::test_list_users (call) *",
            "*test_delete_user*",
            "E   loopguard.LoopMismatchError: *",
            "E     used now:      during tests/test_users.py::test_delete_user (call) *",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"  LG101 {site}  *",
            "    used on another loop by 2 test(s):",
            "      tests/test_users.py::test_list_users",
            "      tests/test_users.py::test_delete_user",
        ]
    )
    assert_no_asyncpg_fallout(result)


@event_loop_era
def test_event_loop_era_scenario1_warn_mode_heals(event_loop_suite: Path, run: RunPytest) -> None:
    """Warn mode: all three pass, the two later ones with a LoopMismatchWarning."""
    result = run("--loopguard-mode=warn")
    result.assert_outcomes(passed=3, warnings=2)
    assert_no_asyncpg_fallout(result)


@event_loop_era
def test_event_loop_era_scenario2_session_fixture_on_its_own_loop(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """0.21 could not run an async fixture on a wider loop without overriding event_loop, so
    suites warmed session engines on a loop of their own: strict mode, marked tests on the
    function-scoped event_loop; both fail with LoopMismatchError, teardown stays clean."""
    own_loop_suite(pytester.path, strict=True)
    assert_scenario2_raised(run("--tb=short", "--loopguard", *UNCAPTURED))


SESSION_EVENT_LOOP_CONFTEST_PY = """
    import asyncio

    import pytest
    import pytest_asyncio
    from sqlalchemy import text

    from app.db import engine as cached_engine


    @pytest.fixture(scope="session")
    def event_loop():  # the 0.21 recipe for session-scoped async fixtures
        loop = asyncio.new_event_loop()
        yield loop
        loop.close()


    @pytest_asyncio.fixture(scope="session")
    async def engine():
        async with cached_engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield cached_engine
        await cached_engine.dispose()
"""
SESSION_EVENT_LOOP_TESTS_PY = """
    import pytest
    from sqlalchemy import text


    @pytest.mark.asyncio
    @pytest.mark.parametrize("n", [1, 2, 3])
    async def test_query(engine, n):
        async with engine.connect() as conn:
            assert (await conn.execute(text(f"select {n}"))).scalar() == n
"""


@event_loop_era
def test_event_loop_era_session_event_loop_override_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The era's fix for scenario 2, a session-scoped ``event_loop`` override: the session
    fixture and every test share one loop, so with --loopguard and every warning an error
    all pass and loopguard says nothing."""
    write(
        pytester.path,
        {
            "pytest.ini": ini("filterwarnings = error").replace(
                "asyncio_mode = auto", "asyncio_mode = strict"
            ),
            "app/__init__.py": "",
            "app/db.py": ERA_DB_PY,
            "conftest.py": SESSION_EVENT_LOOP_CONFTEST_PY,
            "test_queries.py": SESSION_EVENT_LOOP_TESTS_PY,
        },
    )
    result = run("--loopguard", "-W", "error", *UNCAPTURED)
    result.assert_outcomes(passed=3, warnings=0)
    assert_silent(result)
    assert_no_asyncpg_fallout(result)
    assert_clean_teardown(result)


# == pytest-asyncio 0.23: a fixture's scope is its loop's scope =============================

scope_is_loop_era = pytest.mark.skipif(
    not (0, 23) <= PYTEST_ASYNCIO < (0, 24),
    reason=f"pytest-asyncio 0.23 idioms; installed: {describe('pytest-asyncio')}",
)

SCOPED_FIXTURE_CONFTEST_PY = """
    import os

    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest_asyncio.fixture(scope="session")  # 0.23: runs on the session-scoped loop
    async def engine():
        engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=5)
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()
"""
SCOPED_FIXTURE_ENGINE_LINE = line_of(SCOPED_FIXTURE_CONFTEST_PY, "engine = create_async_engine(")


@scope_is_loop_era
def test_scope_is_loop_era_scenario2_session_fixture_function_tests(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """0.23 ties an async fixture's loop to its scope: a session fixture warms the engine on
    the session loop, the tests run on function loops; both fail with LoopMismatchError
    calling the owner loop idle, and the fixture's dispose() on the session loop is clean."""
    tests = OWN_LOOP_TESTS_PY.format(header="", marker="")
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": SCOPED_FIXTURE_CONFTEST_PY,
            "test_engine.py": tests,
        },
    )
    result = run("--tb=short", "--loopguard", *UNCAPTURED)
    result.assert_outcomes(failed=2, errors=0)
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            f"E     created at:    conftest.py:{SCOPED_FIXTURE_ENGINE_LINE} in engine "
            "(during test_engine.py::test_one (setup))",
            "E     bound:         first connection opened during test_engine.py::test_one "
            "(setup), at conftest.py:* in engine, on loop #*, which is still open but not running",
            "E     likely cause:  it belongs to a loop that is still open but not running: the "
            "engine is created by the session-scoped fixture 'engine' at conftest.py:*, whose "
            "loop scope is wider than the test's (the test runs on a loop of its own).",
            "E   loopguard.LoopMismatchError: *",
            "E     used now:      during test_engine.py::test_two (call) *",
            "2 event-loop mismatches from 1 engine:",
        ]
    )
    assert_no_asyncpg_fallout(result)
    assert_clean_teardown(result)


# == pytest-asyncio 1.x: one asyncio.Runner per loop scope ==================================

runner_era = pytest.mark.skipif(
    PYTEST_ASYNCIO < (1, 0),
    reason=f"pytest-asyncio 1.x loop runners; installed: {describe('pytest-asyncio')}",
)

MODULE_RUNNER_TESTS_PY = """
    import pytest
    from sqlalchemy import text

    from app.db import Session

    pytestmark = pytest.mark.asyncio(loop_scope="module")  # one runner for the module


    @pytest.mark.parametrize("n", [1, 2, 3])
    async def test_on_the_module_loop(n):
        async with Session() as session:
            assert (await session.execute(text(f"select {n}"))).scalar() == n
"""
FUNCTION_RUNNER_TESTS_PY = """
    from sqlalchemy import text

    from app.db import Session


    async def test_first_on_its_own_loop():
        async with Session() as session:
            assert (await session.execute(text("select 1"))).scalar() == 1


    async def test_second_on_its_own_loop():
        async with Session() as session:
            assert (await session.execute(text("select 2"))).scalar() == 2
"""


@runner_era
def test_runner_era_scenario1_module_runner_then_function_runners(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """A module-level engine used by a module on a module-scoped runner (three tests, one
    loop: fine), then by a module on function-scoped runners: the module's runner is closed
    by then, so both later tests fail with LoopMismatchError naming the closed loop."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "app/__init__.py": "",
            "app/db.py": ERA_DB_PY,
            "tests/test_a_module_loop.py": MODULE_RUNNER_TESTS_PY,
            "tests/test_b_function_loops.py": FUNCTION_RUNNER_TESTS_PY,
        },
    )
    result = run("--tb=short", "--loopguard")
    result.assert_outcomes(passed=3, failed=2)
    first = "tests/test_a_module_loop.py::test_on_the_module_loop[[]1]"  # fnmatch: "[1]"
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: *",
            f"E     created at:    app/db.py:{ERA_DB_LINE} in <module> *",
            f"E     bound:         first connection opened during {first} (call), at *, on "
            "loop #*, which is now closed",
            "E     used now:      during tests/test_b_function_loops.py::"
            "test_first_on_its_own_loop (call) *",
            "E     likely cause:  the engine outlived the event loop it was first used on*",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"    2 × raised; first bound during {first} (call)",
            "      tests/test_b_function_loops.py::test_first_on_its_own_loop",
            "      tests/test_b_function_loops.py::test_second_on_its_own_loop",
        ]
    )
    assert_no_asyncpg_fallout(result)


CLASS_RUNNER_TESTS_PY = """
    import os

    import pytest
    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest_asyncio.fixture(scope="class", loop_scope="class")
    async def engine():
        engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=5)
        async with engine.connect() as conn:  # warm on the class's runner
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()


    {marker}
    class TestOrders:
        async def test_one(self, engine):
            async with engine.connect() as conn:
                assert (await conn.execute(text("select 1"))).scalar() == 1

        async def test_two(self, engine):
            async with engine.connect() as conn:
                assert (await conn.execute(text("select 2"))).scalar() == 2
"""


@runner_era
def test_runner_era_scenario2_class_runner_fixture_function_runner_tests(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """A class-scoped fixture on the class's runner, its tests on function runners: both
    fail with LoopMismatchError blaming the wider loop scope; dispose() on the class's
    runner afterwards stays clean."""
    write(
        pytester.path,
        {"pytest.ini": ini(), "test_orders.py": CLASS_RUNNER_TESTS_PY.format(marker="")},
    )
    result = run("--tb=short", "--loopguard", *UNCAPTURED)
    result.assert_outcomes(failed=2, errors=0)
    result.stdout.fnmatch_lines(
        [
            "E     bound:         first connection opened during "
            "test_orders.py::TestOrders::test_one (setup), at *, on loop #*, "
            "which is still open but not running",
            "E     used now:      during test_orders.py::TestOrders::test_one (call) *",
            "E     likely cause:  it belongs to a loop that is still open but not running: the "
            "engine is created by the class-scoped fixture 'engine' at "
            f"test_orders.py:{line_of(CLASS_RUNNER_TESTS_PY, '@pytest_asyncio.fixture')}, whose "
            "loop scope is wider than the test's (the test runs on a loop of its own).",
            "E     fix:           *loop_scope*",
            "E     used now:      during test_orders.py::TestOrders::test_two (call) *",
            "2 event-loop mismatches from 1 engine:",
        ]
    )
    assert_no_asyncpg_fallout(result)
    assert_clean_teardown(result)


@runner_era
def test_runner_era_scenario2_fixed_with_the_class_loop_scope_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The fix the message gives: the class's tests on the class's runner; with --loopguard
    and every warning an error, both pass and loopguard says nothing."""
    write(
        pytester.path,
        {
            "pytest.ini": ini("filterwarnings = error"),
            "test_orders.py": CLASS_RUNNER_TESTS_PY.format(
                marker='@pytest.mark.asyncio(loop_scope="class")'
            ),
        },
    )
    result = run("--loopguard", "-W", "error", *UNCAPTURED)
    result.assert_outcomes(passed=2, warnings=0)
    assert_silent(result)
    assert_no_asyncpg_fallout(result)
    assert_clean_teardown(result)


# == what is refused ===========================================================================


@pytest.mark.parametrize("old", ["1.4.23", "1.3.24", "0.9.0b1"])
def test_install_refuses_a_sqlalchemy_older_than_supported(
    monkeypatch: pytest.MonkeyPatch, old: str
) -> None:
    """An older SQLAlchemy than pyproject.toml allows is not guarded half-way: install()
    says which version it found, what is supported and how to upgrade; nothing is patched."""
    import sqlalchemy
    from sqlalchemy.pool import QueuePool

    import loopguard
    from loopguard._state import STATE

    monkeypatch.setattr(sqlalchemy, "__version__", old)
    try:
        loopguard.install("raise")
    except loopguard.MissingDependencyError as exc:  # nothing else to guard either
        reason = str(exc)
    else:  # another integration did enable: the refusal is recorded as the reason
        reason = STATE.skipped["sqlalchemy"]
        assert "sqlalchemy" not in STATE.enabled
        assert not hasattr(QueuePool._do_get, "__loopguard_wrapped__")
        loopguard.uninstall()
    assert (
        f"SQLAlchemy {old} is too old: loopguard supports 1.4.24 and newer; "
        "pip install -U 'sqlalchemy[asyncio]>=1.4.24'"
    ) in reason
    assert not hasattr(QueuePool._do_get, "__loopguard_wrapped__")
