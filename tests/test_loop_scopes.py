"""Loop scopes before anything runs (LG105), and pytest-asyncio's loops named in messages.

The pytester tests write a small suite (a pytest.ini with pytest-asyncio in auto mode, a
conftest.py with the fixtures, test modules) and run pytest on it in a subprocess with
``pytester.runpytest_subprocess``, so loopguard is loaded through its real entry point and
the engines talk to the throwaway PostgreSQL from ``pg_dsn``.  The unit tests at the end
check what counts as loop-bound and the exact wording of the warning.
"""

from __future__ import annotations

import asyncio
import gc
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import test_pytest_plugin as plugin_tests
from test_pytest_plugin import RunPytest, ini, line_of, output, write
from teststack import PYTEST_ASYNCIO, SQLALCHEMY, describe

import loopguard
from loopguard import _loops
from loopguard._asyncio_loop_scopes import LoopScope
from loopguard._loop_bound_values import (
    ASYNCPG,
    ENGINE,
    OTHER,
    PSYCOPG_CONNECTION,
    Bound,
    bound_to_loop,
    loop_bound,
)
from loopguard._pytest_loops import loop_label, loop_of
from loopguard._pytest_scopes import Use, format_message

# The plugin tests' fixtures, the autouse one that cleans the environment included.
_clean_environment = plugin_tests._clean_environment
db_url = plugin_tests.db_url
run = plugin_tests.run

# The nox matrix runs this module on pytest-asyncio 0.21 to 1.x (see noxfile.py).
needs_loop_scope = pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 24),
    reason=f"loop_scope= needs pytest-asyncio >= 0.24 ({describe('pytest-asyncio')})",
)
# Before 1.1 pytest-asyncio refuses a function-loop fixture in a test on a wider loop
# (MultipleEventLoopsRequestedError); from 1.1 each loop scope has its own asyncio.Runner.
needs_runners = pytest.mark.skipif(
    PYTEST_ASYNCIO < (1, 1),
    reason=f"a narrower fixture loop needs pytest-asyncio >= 1.1 ({describe('pytest-asyncio')})",
)


# -- helpers -----------------------------------------------------------------------------


def assert_no_scope_warning(result: pytest.RunResult) -> None:
    """No LG105 anywhere: no warning, no log record."""
    text = output(result)
    assert "LoopScopeMismatchWarning" not in text
    assert "loop_scope_mismatch" not in text
    assert "LG105" not in text


# -- scenario 2: a session-loop engine fixture, tests on function loops ---------------------

ENGINE_CONFTEST_PY = """
    import os

    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def engine():
        engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=5)
        async with engine.connect() as conn:  # warm: the pool keeps a session-loop connection
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()
"""
ENGINE_LINE = line_of(ENGINE_CONFTEST_PY, "@pytest_asyncio.fixture(")

ENGINE_TESTS_PY = """
    import pytest
    from sqlalchemy import text

    {marker}

    async def test_one(engine):
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar() == 1


    async def test_two(engine):
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 2"))).scalar() == 2
"""
T_ONE = "test_engine.py::test_one"
T_TWO = "test_engine.py::test_two"

SCENARIO2_WARNING = [
    "*warnings summary*",
    T_ONE,
    f"*conftest.py:{ENGINE_LINE}: LoopScopeMismatchWarning: fixture 'engine' yields a pooled "
    "SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool) from pytest-asyncio's session-scoped "
    f"loop, but {T_ONE} and 1 more test run on function-scoped loops: *",
    f'    fixture:       engine at conftest.py:{ENGINE_LINE}, loop_scope="session" '
    "(its loop_scope argument), wider than the tests'",
    f'    tests:         {T_ONE}, {T_TWO}, loop_scope="function" (*)',
    "    fix:           run the tests on the fixture's loop "
    # (0.26+ adds the ini option here: see test_the_fixes_are_spelled_for_...)
    '(@pytest.mark.asyncio(loop_scope="session") on them*), or give the fixture the tests\' '
    'loop scope (@pytest_asyncio.fixture(scope="function", loop_scope="function")).',
    "    (Background on this warning: `loopguard explain LG105`, "
    "or LG105 on the Error codes page of the docs)",
]


# What the warning says will happen to the tests, in each mode (its first line's end).
SCENARIO2_RAISE_OUTCOME = (
    "*: LoopScopeMismatchWarning: fixture 'engine' yields * run on function-scoped loops: "
    "each of them that uses it fails at its first query with LoopMismatchError (LG101), "
    "stopped before any I/O; the fixture's own use of it goes on working."
)
SCENARIO2_WARN_OUTCOME = (
    "*: LoopScopeMismatchWarning: fixture 'engine' yields * run on function-scoped loops: "
    "at each one's first query loopguard warns (LG101), closes the connections of the other "
    "loop without I/O and moves the engine to the test's loop: the tests pass, but every "
    "test opens new connections and leaves them behind when its loop closes (LG106)."
)


def engine_suite(root: Path, marker: str = "") -> None:
    """The scenario 2 suite; ``marker`` is a module-level line of the test module."""
    write(
        root,
        {
            "pytest.ini": ini(),
            "conftest.py": ENGINE_CONFTEST_PY,
            "test_engine.py": ENGINE_TESTS_PY.format(marker=marker),
        },
    )


@needs_loop_scope
def test_scenario2_install_in_conftest_gets_the_loop_scope_check(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """loopguard.install() at the end of conftest.py instead of --loopguard: the same
    LoopScopeMismatchWarning before the tests run, and the same errors."""
    engine_suite(pytester.path)
    conftest = ENGINE_CONFTEST_PY + plugin_tests.INSTALL_CONFTEST_PY
    write(pytester.path, {"conftest.py": conftest})
    result = run("--tb=short")
    result.assert_outcomes(failed=2, errors=0, warnings=1)
    result.stdout.fnmatch_lines(["loopguard: mode=raise (from install() at conftest.py:*)*"])
    result.stdout.fnmatch_lines(SCENARIO2_WARNING)
    result.stdout.fnmatch_lines(["FAILED test_engine.py::test_one - loopguard.LoopMismatchError*"])


@needs_loop_scope
def test_scenario2_warns_at_setup_before_the_loop_mismatch_error(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Raise mode: one LoopScopeMismatchWarning names the fixture, its loop scope, the tests,
    theirs and the fixes; it is recorded while test_one is set up (its log record says so,
    and comes before the first LoopMismatchError's), and the runtime errors then name the
    fixture's loop as pytest-asyncio's session-scoped loop and each test's own loop."""
    engine_suite(pytester.path)
    result = run("--loopguard", "--tb=short", "-s", "-p", "no:logging")
    result.assert_outcomes(failed=2, errors=0, warnings=1)
    result.stderr.fnmatch_lines(
        [
            # -s: with structlog unconfigured, loopguard prints the records to stderr as they
            # happen, rendered as structlog's default would.
            "*[[]warning*] loopguard.loop_scope_mismatch*code=LG105*fixture=engine*"
            f"fixture_loop_scope=session test_loop_scope=function*used_during='{T_ONE} (setup)'*",
            "*[[]error*] loopguard.loop_mismatch*code=LG101*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            f"E     bound:         first connection opened during {T_ONE} (setup), at *, on "
            "loop #* (pytest-asyncio's session-scoped loop), which is still open but not running",
            f"E     used now:      during {T_ONE} (call) on loop #* (pytest-asyncio's "
            f"function-scoped loop for {T_ONE}), at test_engine.py:* in test_one",
            *SCENARIO2_WARNING,
        ]
    )
    result.stdout.fnmatch_lines([SCENARIO2_RAISE_OUTCOME])
    assert output(result).count("LoopScopeMismatchWarning: ") == 1


SETUP_MISMATCH_CONFTEST_PY = """
    import os

    import pytest
    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest.fixture(scope="session")
    def engine():
        return create_async_engine(os.environ["DATABASE_URL"], pool_size=5)


    @pytest_asyncio.fixture
    async def row(engine):
        async with engine.connect() as conn:
            return (await conn.execute(text("select 1"))).scalar()
"""

SETUP_MISMATCH_TESTS_PY = """
    def test_one(row):
        assert row == 1


    def test_two(row):
        assert row == 1
"""


def test_a_loop_made_in_this_setup_is_named_in_a_mismatch_during_the_setup(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """A function-scoped async fixture uses a session-wide engine: test_two's setup connects
    on test_two's new loop, and the LoopMismatchError raised there (still in the setup) names
    that loop as pytest-asyncio's function-scoped loop for test_two, although the loop was
    made in the same setup, before the plugin's end-of-setup naming."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": SETUP_MISMATCH_CONFTEST_PY,
            "test_setup.py": SETUP_MISMATCH_TESTS_PY,
        },
    )
    result = run("--loopguard", "--tb=short")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            "E     used now:      during test_setup.py::test_two (setup) on loop #* "
            "(pytest-asyncio's function-scoped loop for test_setup.py::test_two), at *",
        ]
    )


FAILING_PROCESSOR_CONFTEST_PY = """

    import structlog


    def failing_processor(logger, method_name, event_dict):
        raise ValueError("this processor fails on purpose")


    structlog.configure(processors=[failing_processor])
"""


@needs_loop_scope
def test_scenario2_a_failing_structlog_processor_changes_nothing_but_one_line(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The suite configures structlog with a processor that raises: the LG105 warning and the
    LoopMismatchErrors are the same as without it (no error at setup), and stderr says once
    that structlog's logger failed."""
    engine_suite(pytester.path)
    conftest = pytester.path / "conftest.py"
    conftest.write_text(conftest.read_text() + textwrap.dedent(FAILING_PROCESSOR_CONFTEST_PY))
    result = run("--loopguard", "--tb=short", "-s", "-p", "no:logging")
    result.assert_outcomes(failed=2, errors=0, warnings=1)
    result.stdout.fnmatch_lines(
        ["E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*"]
    )
    result.stdout.fnmatch_lines(SCENARIO2_WARNING)
    reports = [line for line in result.stderr.lines if line.startswith("loopguard: ")]
    assert reports == [
        "loopguard: the structlog logger 'loopguard' failed (ValueError: this processor fails "
        "on purpose); records it cannot take are dropped (said once per process)."
    ]


@needs_loop_scope
def test_scenario2_record_reaches_the_log_file(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """LOOPGUARD_LOG_FILE gets the LG105 record too (for ``loopguard report``), with the
    fields of the structlog record, before the first LG101 record; the plugin's terminal
    summary stays about engines."""
    engine_suite(pytester.path)
    log_file = pytester.path / "loopguard.jsonl"
    result = run("--loopguard", "--tb=no", env={"LOOPGUARD_LOG_FILE": str(log_file)})
    result.assert_outcomes(failed=2, warnings=1)
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["code"] for r in records] == ["LG105", "LG101", "LG101"]
    scope_record = records[0]
    assert {k: v for k, v in scope_record.items() if k not in ("pid", "timestamp")} == {
        "schema": 1,
        "code": "LG105",
        "action": "warned",
        "fixture": "engine",
        "fixture_at": f"conftest.py:{ENGINE_LINE}",
        "fixture_loop_scope": "session",
        "test_loop_scope": "function",
        "value": "a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)",
        "used_during": f"{T_ONE} (setup)",
        "tests": 2,
        "event": "loopguard.loop_scope_mismatch",
        "level": "warning",
    }
    result.stdout.fnmatch_lines(["*= loopguard =*", "2 event-loop mismatches from 1 engine:"])
    assert "LG105" not in output(result).split("= loopguard =")[1]


@needs_loop_scope
def test_scenario2_warning_as_error_stops_the_first_test_at_setup(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """With the warning turned into an error, test_one errors at setup with it (its body, the
    query that would fail, never runs); the warning is given once, so test_two goes on to
    the runtime LoopMismatchError."""
    engine_suite(pytester.path)
    result = run("--loopguard", "--tb=short", "-W", "error::loopguard.LoopScopeMismatchWarning")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_one*",
            "E   loopguard.LoopScopeMismatchWarning: fixture 'engine' yields a pooled SQLAlchemy "
            "AsyncEngine*",
            "*_ test_two _*",
            "E   loopguard.LoopMismatchError: *",
            f"ERROR {T_ONE} - loopguard.LoopScopeMismatchWarning: *",
        ]
    )
    assert f"used now:      during {T_ONE} (call)" not in output(result)


@needs_loop_scope
def test_scenario2_warn_mode_warns_once_before_the_healing_warnings(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Warn mode: the same single LoopScopeMismatchWarning, then the run-time guard heals the
    engine onto each test's loop with a LoopMismatchWarning each, and both tests pass."""
    engine_suite(pytester.path)
    result = run("--loopguard-mode=warn")
    result.assert_outcomes(passed=2, warnings=3)
    result.stdout.fnmatch_lines(SCENARIO2_WARNING)
    result.stdout.fnmatch_lines([SCENARIO2_WARN_OUTCOME])
    text = output(result)
    assert text.count("LoopScopeMismatchWarning: ") == 1
    assert text.count("LoopMismatchWarning: ") == 2


@needs_loop_scope
def test_scenario2_tests_on_the_fixtures_loop_are_left_alone(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The legitimate variant: tests marked loop_scope="session" share the fixture's loop;
    with every warning an error, both pass and nothing is reported."""
    engine_suite(pytester.path, 'pytestmark = pytest.mark.asyncio(loop_scope="session")')
    result = run("--loopguard", "-W", "error")
    result.assert_outcomes(passed=2, warnings=0)
    assert_no_scope_warning(result)


@needs_loop_scope
def test_scenario2_without_loopguard_no_scope_warning(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """loopguard off: the plugin compares nothing and names no loop; the tests fail the way
    they always did, deep inside asyncpg."""
    engine_suite(pytester.path)
    result = run("--tb=short")
    result.assert_outcomes(failed=2)
    assert "attached to a different loop" in output(result)
    assert_no_scope_warning(result)
    assert "pytest-asyncio's" not in output(result)


@needs_loop_scope
def test_fixture_set_up_by_a_session_loop_test_is_reported_for_the_next_function_loop_test(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The engine fixture is set up for a test on its own loop (no mismatch there); the next
    test, on a function loop, gets the warning at its setup from the cached value."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": ENGINE_CONFTEST_PY,
            "test_mixed.py": """
                import pytest
                from sqlalchemy import text


                @pytest.mark.asyncio(loop_scope="session")
                async def test_on_the_session_loop(engine):
                    async with engine.connect() as conn:
                        assert (await conn.execute(text("select 1"))).scalar() == 1


                async def test_on_its_own_loop(engine):
                    async with engine.connect() as conn:
                        assert (await conn.execute(text("select 2"))).scalar() == 2
            """,
        },
    )
    result = run("--loopguard", "--tb=line")
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_mixed.py::test_on_its_own_loop",
            "*LoopScopeMismatchWarning: fixture 'engine' yields a pooled SQLAlchemy AsyncEngine "
            "(AsyncAdaptedQueuePool) from pytest-asyncio's session-scoped loop, but "
            "test_mixed.py::test_on_its_own_loop runs on function-scoped loops: *",
            "FAILED test_mixed.py::test_on_its_own_loop - loopguard.LoopMismatchError*",
        ]
    )


OVERRIDING_TESTS_PY = """
    import os

    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest_asyncio.fixture
    async def engine():
        engine = create_async_engine(os.environ["DATABASE_URL"])
        yield engine
        await engine.dispose()


    async def test_own_engine(engine):
        async with engine.connect() as conn:
            assert (await conn.execute(text("select 1"))).scalar() == 1
"""


@needs_loop_scope
def test_a_module_overriding_the_fixture_is_compared_with_its_own_definition(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Two modules whose tests use the same fixture names: the first gets conftest.py's
    session-loop engine (reported), the second its own function-loop engine (silent).  Each
    module's tests are compared with the definitions they resolve to."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": ENGINE_CONFTEST_PY,
            "test_a.py": """
                from sqlalchemy import text


                async def test_shared_engine(engine):
                    async with engine.connect() as conn:
                        assert (await conn.execute(text("select 1"))).scalar() == 1
            """,
            "test_b.py": OVERRIDING_TESTS_PY,
        },
    )
    result = run("--loopguard", "--tb=line")
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*LoopScopeMismatchWarning: fixture 'engine' yields a pooled SQLAlchemy AsyncEngine "
            "(AsyncAdaptedQueuePool) from pytest-asyncio's session-scoped loop, but "
            "test_a.py::test_shared_engine runs on function-scoped loops: *",
            '    tests:         test_a.py::test_shared_engine, loop_scope="function" (*)',
        ]
    )
    assert "and 1 more" not in output(result)
    reported = [line for line in result.stdout.lines if "tests:" in line or "LoopScope" in line]
    assert not [line for line in reported if "test_b.py" in line]


FIXTURE_SCOPE_CONFTEST_PY = """
    import os

    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest_asyncio.fixture(scope="session")
    async def engine():
        engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=5)
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()
"""


@pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 23),
    reason=f"loop scopes came with pytest-asyncio 0.23 ({describe('pytest-asyncio')})",
)
def test_fixture_without_loop_scope_is_on_the_loop_of_its_fixture_scope(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The way 0.23 suites write it (and later ones without the ini option): a session
    fixture runs on the session's loop; a function-loop test requesting it gets the warning,
    with the marker keyword of the installed version."""
    write(
        pytester.path,
        {
            # No asyncio_default_fixture_loop_scope: the fixture's own scope decides.
            "pytest.ini": "[pytest]\nasyncio_mode = auto\n",
            "conftest.py": FIXTURE_SCOPE_CONFTEST_PY,
            "test_engine.py": """
                async def test_requests_it(engine):
                    pass
            """,
        },
    )
    # 0.24+ warn that the ini option is unset, which is not what this test is about.
    result = run("--loopguard", "-W", "ignore::pytest.PytestDeprecationWarning")
    result.assert_outcomes(passed=1, warnings=1)
    keyword = "loop_scope" if PYTEST_ASYNCIO >= (0, 24) else "scope"
    result.stdout.fnmatch_lines(
        [
            "*LoopScopeMismatchWarning: fixture 'engine' yields a pooled SQLAlchemy AsyncEngine "
            "(AsyncAdaptedQueuePool) from pytest-asyncio's session-scoped loop, but "
            "test_engine.py::test_requests_it runs on function-scoped loops: *",
            # 0.24 to 1.0 write the resolved loop scope onto the function: either source.
            '    fixture:       engine at conftest.py:*, loop_scope="session" (*its fixture '
            "scope), wider than the tests'",
            f"    fix:           run the tests on the fixture's loop (@pytest.mark.asyncio("
            f'{keyword}="session") on them*',
        ]
    )


@pytest.mark.skipif(
    PYTEST_ASYNCIO >= (0, 23),
    reason=f"pytest-asyncio 0.21's single event_loop ({describe('pytest-asyncio')})",
)
def test_before_0_23_there_are_no_loop_scopes_to_compare(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """pytest-asyncio 0.21: every async test and fixture of a test runs on its event_loop
    fixture; with a session-scoped event_loop, the session engine fixture and the tests share
    one loop.  Nothing to compare, nothing reported, and the tests pass."""
    write(
        pytester.path,
        {
            "pytest.ini": "[pytest]\nasyncio_mode = auto\n",
            "conftest.py": textwrap.dedent(FIXTURE_SCOPE_CONFTEST_PY)
            + textwrap.dedent(
                """
                import asyncio

                import pytest


                @pytest.fixture(scope="session")
                def event_loop():
                    loop = asyncio.new_event_loop()
                    yield loop
                    loop.close()
                """
            ),
            "test_engine.py": ENGINE_TESTS_PY.format(marker=""),
        },
    )
    result = run("--loopguard", "-W", "error")
    result.assert_outcomes(passed=2, warnings=0)
    assert_no_scope_warning(result)


# -- legitimate patterns stay silent --------------------------------------------------------

LEGIT_CONFTEST_PY = """
    import os

    import pytest
    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def settings():
        # A wider loop scope, but nothing in it belongs to a loop.
        yield {"url": os.environ["DATABASE_URL"], "pool_size": 5}


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def nullpool_engine(settings):
        # NullPool: a new connection on the running loop at every checkout.
        engine = create_async_engine(settings["url"], poolclass=NullPool)
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def pooled_engine(settings):
        # Pooled, but only ever used by tests on the session's loop.
        engine = create_async_engine(settings["url"], pool_size=settings["pool_size"])
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()


    @pytest.fixture(scope="session")
    def sync_engine_factory(settings):
        # A sync fixture has no loop scope of its own.
        return lambda: create_async_engine(settings["url"], pool_size=1)
"""

LEGIT_TESTS_PY = """
    import pytest
    from sqlalchemy import text


    # First: before 1.0, pytest-asyncio runs a session-loop test that comes after
    # function-loop tests on a fresh loop instead (loopguard reports that at run time).
    @pytest.mark.asyncio(loop_scope="session")
    @pytest.mark.parametrize("n", [1, 2])
    async def test_session_loop_with_the_pooled_engine(pooled_engine, n):
        async with pooled_engine.connect() as conn:
            assert (await conn.execute(text(f"select {n}"))).scalar() == n


    @pytest.mark.parametrize("n", [1, 2])
    async def test_function_loop_with_settings_and_nullpool(settings, nullpool_engine, n):
        assert settings["pool_size"] == 5
        async with nullpool_engine.connect() as conn:
            assert (await conn.execute(text(f"select {n}"))).scalar() == n


    @pytest.mark.parametrize("n", [1, 2])
    async def test_function_loop_with_its_own_engine(sync_engine_factory, n):
        engine = sync_engine_factory()
        async with engine.connect() as conn:
            assert (await conn.execute(text(f"select {n}"))).scalar() == n
        await engine.dispose()
"""


@needs_loop_scope
def test_legitimate_wider_loop_scopes_are_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Function-loop tests using session-loop fixtures that yield a plain dict or a NullPool
    engine, a sync fixture making engines, and a pooled session-loop engine used only on the
    session's loop: with every warning an error, all pass and nothing is reported."""
    write(
        pytester.path,
        {"pytest.ini": ini(), "conftest.py": LEGIT_CONFTEST_PY, "test_legit.py": LEGIT_TESTS_PY},
    )
    result = run("--loopguard", "-W", "error")
    result.assert_outcomes(passed=6, warnings=0)
    assert_no_scope_warning(result)
    result.stdout.no_fnmatch_line("*= loopguard =*")


# -- asyncpg, other loop scopes, a narrower fixture loop -------------------------------------

ASYNCPG_CONFTEST_PY = """
    import os

    import asyncpg
    import pytest_asyncio


    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def pool():
        pool = await asyncpg.create_pool(os.environ["LOOPGUARD_TEST_DSN"], min_size=1)
        yield pool
        await pool.close()


    @pytest_asyncio.fixture
    async def conn():
        conn = await asyncpg.connect(os.environ["LOOPGUARD_TEST_DSN"])
        yield conn
        await conn.close()
"""


@needs_loop_scope
def test_module_loop_asyncpg_pool_used_on_function_loops_is_reported(
    pytester: pytest.Pytester, pg_env: str, run: RunPytest
) -> None:
    """A module-loop asyncpg Pool requested by a function-loop test (a wider loop scope than
    the test's): one warning, whose fix makes the fixture function-scoped."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": ASYNCPG_CONFTEST_PY,
            "test_pg.py": """
                async def test_on_a_function_loop(pool):
                    pass
            """,
        },
    )
    result = run("--loopguard")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_pg.py::test_on_a_function_loop",
            "*LoopScopeMismatchWarning: fixture 'pool' yields an asyncpg Pool from "
            "pytest-asyncio's module-scoped loop, but test_pg.py::test_on_a_function_loop runs "
            "on function-scoped loops: *",
            '    fixture:       pool at conftest.py:*, loop_scope="module" (its loop_scope '
            "argument), wider than the tests'",
            '*(@pytest_asyncio.fixture(scope="function", loop_scope="function")).',
        ]
    )


@needs_runners
def test_function_loop_asyncpg_connection_used_on_a_module_loop_is_reported(
    pytester: pytest.Pytester, pg_env: str, run: RunPytest
) -> None:
    """A function-loop asyncpg Connection (its loop scope from the ini default) requested by a
    module-loop test (a narrower loop scope than the test's): one warning, whose fixes
    include the ini option."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": ASYNCPG_CONFTEST_PY,
            "test_pg.py": """
                import pytest


                @pytest.mark.asyncio(loop_scope="module")
                async def test_on_the_module_loop(conn):
                    pass
            """,
        },
    )
    result = run("--loopguard")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_pg.py::test_on_the_module_loop",
            "*LoopScopeMismatchWarning: fixture 'conn' yields an asyncpg Connection from "
            "pytest-asyncio's function-scoped loop, but test_pg.py::test_on_the_module_loop "
            "runs on module-scoped loops: *",
            '    fixture:       conn at conftest.py:*, loop_scope="function" '
            "(asyncio_default_fixture_loop_scope), narrower than the tests'",
            '    tests:         test_pg.py::test_on_the_module_loop, loop_scope="module" '
            "(its asyncio marker)",
            '*(@pytest_asyncio.fixture(loop_scope="module"), or '
            "asyncio_default_fixture_loop_scope = module).",
        ]
    )


# -- the names of pytest-asyncio's loops -----------------------------------------------------

NAMES_TESTS_PY = """
    import asyncio

    import pytest

    from loopguard._loops import loop_id, loop_name


    def show(test):
        print(f"{test}: [{loop_name(loop_id(asyncio.get_running_loop()))}]")


    async def test_function():
        show("function")


    @pytest.mark.asyncio(loop_scope="module")
    async def test_module():
        show("module")


    @pytest.mark.asyncio(loop_scope="session")
    async def test_session():
        show("session")


    @pytest.mark.asyncio(loop_scope="class")
    class TestGroup:
        async def test_class(self):
            show("class")
"""


@needs_loop_scope
def test_each_pytest_asyncio_loop_is_named_after_its_scope_and_node(
    pytester: pytest.Pytester, run: RunPytest
) -> None:
    """Under loopguard every loop pytest-asyncio makes is named after its loop scope and the
    node owning it (none for the session's); loopguard off, no loop gets a name."""
    write(pytester.path, {"pytest.ini": ini(), "test_names.py": NAMES_TESTS_PY})
    result = run("--loopguard", "-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*function: [[] (pytest-asyncio's function-scoped loop for "
            "test_names.py::test_function)]",
            "*module: [[] (pytest-asyncio's module-scoped loop for test_names.py)]",
            "*session: [[] (pytest-asyncio's session-scoped loop)]",
            "*class: [[] (pytest-asyncio's class-scoped loop for test_names.py::TestGroup)]",
        ]
    )
    result = run("-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*function: [[]]", "*module: [[]]", "*session: [[]]"])


# -- what counts as bound to a loop; the wording -----------------------------------------------


def test_loop_bound_values() -> None:
    """Pooled engines, and sessions, sessionmakers, containers holding them, are loop-bound;
    NullPool engines, and everything bound to them, plain values and containers are not."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import sessionmaker
    from sqlalchemy.pool import NullPool

    url = "postgresql+asyncpg://user@localhost/db"  # never connected
    pooled = create_async_engine(url, pool_size=1)
    nullpool = create_async_engine(url, poolclass=NullPool)
    engine_text = "a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)"
    try:
        assert loop_bound(pooled) == engine_text
        assert (
            loop_bound(AsyncSession(pooled)) == f"a SQLAlchemy AsyncSession bound to {engine_text}"
        )
        assert (
            loop_bound(sessionmaker(pooled, class_=AsyncSession))  # type: ignore[call-overload]
            == f"an sessionmaker bound to {engine_text}"
        )
        assert loop_bound((1, pooled)) == f"a tuple holding {engine_text}"
        assert loop_bound({"engine": pooled}) == f"a dict holding {engine_text}"
        assert loop_bound([[pooled]]) is None  # one level deep only
        for value in (
            nullpool,
            AsyncSession(nullpool),
            sessionmaker(nullpool, class_=AsyncSession),  # type: ignore[call-overload]
            AsyncSession(),
            {"url": url},
            [1, 2],
            None,
            "postgresql://",
        ):
            assert loop_bound(value) is None, value
    finally:
        asyncio.run(_dispose(pooled, nullpool))


@pytest.mark.parametrize(
    ("kind", "mode", "outcome"),
    [
        (
            ASYNCPG,
            "warn",
            "at each one's first use loopguard warns (LG103), then asyncpg's own error fails "
            "the test (a RuntimeError about a Future attached to a different loop).",
        ),
        (
            PSYCOPG_CONNECTION,
            "raise",
            "psycopg does its I/O on whichever loop awaits it, so their queries work, but its "
            "lock belongs to the first loop on which two tasks waited for it: concurrent use "
            "on another loop fails (RuntimeError: ... is bound to a different event loop).",
        ),
        (
            OTHER,
            "warn",
            "loopguard does not check it: whether their first use of it fails depends on what "
            "in it waits on the fixture's loop.",
        ),
    ],
)
def test_the_warning_says_what_will_happen_to_the_tests(kind: str, mode: str, outcome: str) -> None:
    """The first line ends with what the tests' use of the value does: per kind of value and
    mode (an engine's and an asyncpg pool's raise-mode words are checked in real runs)."""
    use = Use(
        SimpleNamespace(argname="db", scope="session"),
        LoopScope("session", "its loop_scope argument"),
        LoopScope("function", "pytest-asyncio's default"),
    )
    message = format_message(use, Bound("a value", kind), ["t.py::test"], None, (1, 5), mode)
    assert message.splitlines()[0] == (
        "fixture 'db' yields a value from pytest-asyncio's session-scoped loop, but t.py::test "
        f"runs on function-scoped loops: {outcome}"
    )


@pytest.mark.skipif(
    SQLALCHEMY < (2, 0),
    reason=f"{describe('sqlalchemy')} has no postgresql+psycopg (psycopg 3) dialect",
)
def test_held_connections_are_told_apart_by_their_driver(pg_dsn: str) -> None:
    """A SQLAlchemy AsyncConnection held open fails on another loop over asyncpg, and works
    for plain queries over psycopg: the warning's kind follows the driver."""
    from pgserver import sqlalchemy_url
    from sqlalchemy.ext.asyncio import create_async_engine

    async def kinds() -> list[Any]:
        found = []
        for url in (sqlalchemy_url(pg_dsn), sqlalchemy_url(pg_dsn, "psycopg")):
            engine = create_async_engine(url)
            async with engine.connect() as conn:
                found.append(bound_to_loop(conn))
            await engine.dispose()
        return found

    assert asyncio.run(kinds()) == [
        Bound("a SQLAlchemy AsyncConnection", "asyncpg-connection"),
        Bound("a SQLAlchemy AsyncConnection", PSYCOPG_CONNECTION),
    ]
    assert bound_to_loop({"e": 1}) is None
    assert ENGINE == "engine"


async def _dispose(*engines: Any) -> None:
    for engine in engines:
        await engine.dispose()


def test_warning_message_exact_words() -> None:
    """The whole message of a wider fixture loop scope from the ini default, with more than
    three tests: the fixes name the ini options, and the list is cut after three."""
    fixturedef = SimpleNamespace(argname="db", scope="module")
    use = Use(
        fixturedef,
        LoopScope("module", "asyncio_default_fixture_loop_scope"),
        LoopScope("class", "its asyncio marker"),
    )
    tests = [f"t.py::T::test_{n}" for n in range(5)]
    pool = Bound("an asyncpg Pool", ASYNCPG)
    message = format_message(use, pool, tests, "conftest.py:3", (1, 5))
    assert message.splitlines() == [
        "fixture 'db' yields an asyncpg Pool from pytest-asyncio's module-scoped loop, but "
        "t.py::T::test_0 and 4 more tests run on class-scoped loops: each of them that uses it "
        "fails at its first use with LoopMismatchError (LG103), stopped before any I/O.",
        '  fixture:       db at conftest.py:3, loop_scope="module" '
        "(asyncio_default_fixture_loop_scope), wider than the tests'",
        "  tests:         t.py::T::test_0, t.py::T::test_1, t.py::T::test_2 and 2 more, "
        'loop_scope="class" (its asyncio marker)',
        "  fix:           run the tests on the fixture's loop "
        '(@pytest.mark.asyncio(loop_scope="module") on them, or '
        "asyncio_default_test_loop_scope = module in the ini), or give the fixture the tests' "
        'loop scope (@pytest_asyncio.fixture(scope="class", loop_scope="class"), or '
        "asyncio_default_fixture_loop_scope = class).",
        "  (Background on this warning: `loopguard explain LG105`, "
        "or LG105 on the Error codes page of the docs)",
    ]
    assert issubclass(loopguard.LoopScopeMismatchWarning, loopguard.LoopguardWarning)


@pytest.mark.parametrize(
    ("version", "fix"),
    [
        (
            (0, 23),
            '(@pytest.mark.asyncio(scope="session") on them), or give the fixture the tests\' '
            'loop scope (@pytest_asyncio.fixture(scope="function")).',
        ),
        (
            (0, 24),
            '(@pytest.mark.asyncio(loop_scope="session") on them), or give the fixture the '
            'tests\' loop scope (@pytest_asyncio.fixture(scope="function", '
            'loop_scope="function")).',
        ),
        (
            (0, 26),
            '(@pytest.mark.asyncio(loop_scope="session") on them, or '
            "asyncio_default_test_loop_scope = session in the ini), or give the fixture the "
            'tests\' loop scope (@pytest_asyncio.fixture(scope="function", '
            'loop_scope="function")).',
        ),
    ],
    ids=["0.23", "0.24", "0.26"],
)
def test_the_fixes_are_spelled_for_the_installed_pytest_asyncio(
    version: tuple[int, ...], fix: str
) -> None:
    """0.23 has the marker's scope= and no fixture loop_scope; 0.24 loop_scope= but no
    asyncio_default_test_loop_scope (0.26)."""
    use = Use(
        SimpleNamespace(argname="engine", scope="session"),
        LoopScope("session", "its fixture scope"),
        LoopScope("function", "pytest-asyncio's default"),
    )
    message = format_message(use, Bound("an asyncpg Pool", ASYNCPG), ["t.py::test"], None, version)
    assert message.splitlines()[3] == f"  fix:           run the tests on the fixture's loop {fix}"


def test_loop_fixtures_of_every_pytest_asyncio_line_are_recognised() -> None:
    """Runners (1.1+), loop fixtures (0.21 to 1.0) and 0.23-0.26's collector loops give their
    loop; any other fixture, or a value that is no loop, gives None."""
    loop = asyncio.new_event_loop()
    runner = SimpleNamespace(get_loop=lambda: loop)
    try:
        assert loop_of("_session_scoped_runner", runner) is loop
        for name in ("event_loop", "_module_event_loop", "_session_event_loop"):
            assert loop_of(name, loop) is loop
        assert loop_of("tests/test_a.py::<event_loop>", loop) is loop
        assert loop_of("my_event_loop", loop) is None
        assert loop_of("engine", loop) is None
        assert loop_of("event_loop", object()) is None
    finally:
        loop.close()
    assert loop_label("session", "") == "pytest-asyncio's session-scoped loop"
    assert loop_label("module", "a.py") == "pytest-asyncio's module-scoped loop for a.py"


def test_a_named_loop_is_named_in_messages_until_it_is_collected() -> None:
    """``LoopRef.describe()`` carries the name; the name goes when the loop is collected."""
    key = _name_a_loop()
    gc.collect()
    assert _loops.loop_name(key) == ""


def _name_a_loop() -> int:
    loop = asyncio.new_event_loop()
    try:
        _loops.name_loop(loop, loop_label("session", ""))
        key = _loops.loop_id(loop)
        assert _loops.loop_name(key) == " (pytest-asyncio's session-scoped loop)"
        assert _loops.LoopRef(loop).describe() == (
            f"loop #{key} (pytest-asyncio's session-scoped loop), which is still open but not "
            "running"
        )
    finally:
        loop.close()
    return key
