"""The pytest plugin end to end: real pytest runs of generated suites against a real PostgreSQL.

Every test writes a small project (an app module reading its database URL from DATABASE_URL,
a pytest.ini with pytest-asyncio in auto mode, some tests) and runs pytest on it in a
subprocess with ``pytester.runpytest_subprocess``, so the plugin is loaded through its real
``asyncio_loopguard`` entry point and asyncpg talks to the throwaway server from ``pg_dsn``.
Nothing is mocked: the loops are pytest-asyncio's, the errors are asyncpg's or loopguard's.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

import pytest
from guard_helpers import SECRET, assert_no_secret
from pgserver import sqlalchemy_url
from sqlalchemy.engine import make_url
from teststack import PYTEST_ASYNCIO, SQLALCHEMY, describe

VALID = "Valid values: 1, true, on, raise, warn, 0, false, off."
ASYNCPG_DIFFERENT_LOOP = "attached to a different loop"
ASYNCPG_BUSY = "another operation is in progress"
ASYNCPG_PROTOCOL_STATE = "unknown protocol state"

RunPytest = Callable[..., pytest.RunResult]
# The integrations the header names: every library of the test extra is installed.
GUARDING = "guarding sqlalchemy, asyncpg, httpx, aiohttp, redis, psycopg_pool, asyncio"

# The nox matrix runs this module on pytest-asyncio 0.21 to 1.x (see noxfile.py).
needs_loop_scope = pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 24),
    reason=f"loop_scope= needs pytest-asyncio >= 0.24 ({describe('pytest-asyncio')}); "
    "tests/test_compat.py runs this scenario the way older suites write it",
)
needs_default_test_loop_scope = pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 26),
    reason="asyncio_default_test_loop_scope needs pytest-asyncio >= 0.26 "
    f"({describe('pytest-asyncio')})",
)


# -- helpers -----------------------------------------------------------------------------


def ini(*extra: str, fixture_loop_scope: str = "function") -> str:
    """A pytest.ini for a generated suite: pytest-asyncio in auto mode, plus ``extra`` lines."""
    lines = ["[pytest]", "asyncio_mode = auto"]
    if PYTEST_ASYNCIO >= (0, 24):  # older lines do not know the option (and warn about it)
        lines.append(f"asyncio_default_fixture_loop_scope = {fixture_loop_scope}")
    lines += ["pythonpath = .", *extra]
    return "\n".join(lines) + "\n"


def write(root: Path, files: dict[str, str]) -> None:
    """Write ``{relative path: source}``; the source is dedented."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))


def line_of(source: str, needle: str) -> int:
    """1-based number of the only line of (dedented) ``source`` containing ``needle``."""
    lines = textwrap.dedent(source).lstrip("\n").splitlines()
    hits = [number for number, line in enumerate(lines, 1) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def assert_no_asyncpg_fallout(result: pytest.RunResult) -> None:
    """None of the errors loopguard exists to pre-empt made it into the run's output."""
    text = output(result)
    for symptom in (ASYNCPG_DIFFERENT_LOOP, ASYNCPG_BUSY, ASYNCPG_PROTOCOL_STATE):
        assert symptom not in text, symptom


def assert_silent(result: pytest.RunResult) -> None:
    """loopguard said nothing: no log record, no warning, no summary section."""
    text = output(result)
    assert "loopguard.loop_mismatch" not in text
    assert "LoopMismatch" not in text
    assert "LG101" not in text
    result.stdout.no_fnmatch_line("*= loopguard =*")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer environment's loopguard settings must not leak into the child runs."""
    for name in ("LOOPGUARD", "LOOPGUARD_LOG_FILE", "DATABASE_URL", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> RunPytest:
    """Run pytest in a subprocess in the generated suite, with extra environment variables."""

    def _run(*args: str, env: Optional[dict[str, str]] = None) -> pytest.RunResult:
        # pytest sets PYTEST_CURRENT_TEST for *this* test; a child would inherit it until its
        # own first test starts (see test_inherited_pytest_current_test_is_not_reported).
        monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)

    return _run


@pytest.fixture
def db_url(pg_env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The throwaway server's SQLAlchemy URL, exported as DATABASE_URL for the generated apps."""
    url = sqlalchemy_url(pg_env)
    monkeypatch.setenv("DATABASE_URL", url)
    return url


# -- scenario 1: @lru_cache engine + module-level async_sessionmaker ------------------------

CACHED_DB_PY = '''
    """The pattern from countless projects: a cached engine and a module-level sessionmaker."""

    import os
    from functools import lru_cache

    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


    @lru_cache
    def get_async_engine() -> AsyncEngine:
        url = os.environ["DATABASE_URL"]
        return create_async_engine(url, pool_size=5)


    SessionLocal = async_sessionmaker(get_async_engine(), expire_on_commit=False)
'''
if SQLALCHEMY < (2, 0):  # 1.4 spells async_sessionmaker as sessionmaker(class_=AsyncSession)
    CACHED_DB_PY = CACHED_DB_PY.replace(
        "AsyncEngine, async_sessionmaker, create_async_engine",
        "AsyncEngine, AsyncSession, create_async_engine\n"
        "    from sqlalchemy.orm import sessionmaker",
    ).replace(
        "async_sessionmaker(get_async_engine(), ",
        "sessionmaker(get_async_engine(), class_=AsyncSession, ",
    )
CACHED_DB_LINE = line_of(CACHED_DB_PY, "return create_async_engine(")

CACHED_TESTS_PY = """
    from sqlalchemy import text
    from src.configs.db import SessionLocal


    async def test_create_user():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 1"))).scalar() == 1


    async def test_list_users():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 2"))).scalar() == 2


    async def test_delete_user():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 3"))).scalar() == 3
"""
T_CREATE = "tests/test_users.py::test_create_user"
T_LIST = "tests/test_users.py::test_list_users"
T_DELETE = "tests/test_users.py::test_delete_user"


@pytest.fixture
def cached_engine_suite(pytester: pytest.Pytester, db_url: str) -> Path:
    """examples/cached_engine, generated: three tests, each on its own pytest-asyncio loop."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "src/__init__.py": "",
            "src/configs/__init__.py": "",
            "src/configs/db.py": CACHED_DB_PY,
            "tests/test_users.py": CACHED_TESTS_PY,
        },
    )
    return pytester.path


def test_scenario1_without_loopguard_fails_deep_inside_asyncpg(
    cached_engine_suite: Path, run: RunPytest
) -> None:
    """Documents the problem: unguarded, tests 2 and 3 fail with asyncpg's cross-loop errors."""
    result = run("--tb=short")
    result.assert_outcomes(passed=1, failed=2)
    assert ASYNCPG_DIFFERENT_LOOP in result.stdout.str()
    result.stdout.fnmatch_lines(["loopguard: off"])
    result.stdout.no_fnmatch_line("*= loopguard =*")
    assert "LoopMismatchError" not in output(result)


INSTALL_CONFTEST_PY = """
    import loopguard

    loopguard.install()
"""
INSTALL_SOURCE = f"install() at conftest.py:{line_of(INSTALL_CONFTEST_PY, 'loopguard.install()')}"


@pytest.mark.parametrize(
    ("args", "env", "conftest", "source"),
    [
        (["--loopguard"], {}, None, "the --loopguard option"),
        ([], {"LOOPGUARD": "1"}, None, "the LOOPGUARD environment variable"),
        ([], {}, INSTALL_CONFTEST_PY, INSTALL_SOURCE),
    ],
    ids=["cli", "env", "conftest-install"],
)
def test_scenario1_raise_mode_explains_each_failure_and_summarises(
    cached_engine_suite: Path,
    run: RunPytest,
    args: list[str],
    env: dict[str, str],
    conftest: Optional[str],
    source: str,
) -> None:
    """Raise mode: tests 2 and 3 fail with LoopMismatchError naming the creation site, the
    binding and the using test and the closed loop; the summary groups both under one engine;
    asyncpg never gets to raise anything.  A loopguard.install() in conftest.py gives all of
    --loopguard's output, its header naming the line."""
    if conftest is not None:
        write(cached_engine_suite, {"conftest.py": conftest})
    result = run("--tb=short", *args, env=env)
    result.assert_outcomes(passed=1, failed=2, errors=0)
    site = f"src/configs/db.py:{CACHED_DB_LINE}"
    result.stdout.fnmatch_lines(
        [
            f"loopguard: mode=raise (from {source}), {GUARDING}",
            "*test_list_users*",
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*, but "
            "its pooled connections belong to loop #*; stopped before any I/O.",
            "E     engine:        postgresql+asyncpg://*(AsyncAdaptedQueuePool)",
            f"E     created at:    {site} in get_async_engine "
            "(outside any test, no event loop running)",
            f"E     bound:         first connection opened during {T_CREATE} (call), "
            "at tests/test_users.py:* in test_create_user, on loop #*, which is now closed",
            f"E     used now:      during {T_LIST} (call) on loop #*, "
            "at tests/test_users.py:* in test_list_users",
            "E     likely cause:  the engine outlived the event loop it was first used on: "
            "it is cached*",
            "E     fix:           *await engine.dispose()*",
            "*test_delete_user*",
            "E   loopguard.LoopMismatchError: *",
            f"E     created at:    {site} in get_async_engine *",
            f"E     bound:         first connection opened during {T_CREATE} (call), "
            "at *now closed",
            f"E     used now:      during {T_DELETE} (call) *",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"  LG101 {site} in get_async_engine  *postgresql+asyncpg://*",
            f"    2 × raised; first bound during {T_CREATE} (call)",
            "    used on another loop by 2 test(s):",
            f"      {T_LIST}",
            f"      {T_DELETE}",
            "*short test summary info*",
            f"FAILED {T_LIST} - loopguard.LoopMismatchError*",
            f"FAILED {T_DELETE} - loopguard.LoopMismatchError*",
        ]
    )
    assert_no_asyncpg_fallout(result)
    assert "Event loop is closed" not in output(result)


def test_scenario1_warn_mode_heals_and_warns(cached_engine_suite: Path, run: RunPytest) -> None:
    """Warn mode: all three tests pass; two LoopMismatchWarnings point at the tests' own lines;
    the summary section counts them as warned."""
    result = run("--loopguard-mode=warn")
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(
        [
            f"loopguard: mode=warn (from the --loopguard-mode option), {GUARDING}",
            "*warnings summary*",
            T_LIST,
            "*tests/test_users.py:*: LoopMismatchWarning: SQLAlchemy AsyncEngine used on event "
            "loop #*, but its pooled connections belong to loop #*; its stale connections were "
            "released and it now belongs to the new loop.",
            f"*created at:    src/configs/db.py:{CACHED_DB_LINE} in get_async_engine*",
            T_DELETE,
            "*LoopMismatchWarning: *",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"  LG101 src/configs/db.py:{CACHED_DB_LINE} in get_async_engine  *",
            f"    2 × warned; first bound during {T_CREATE} (call)",
            "    used on another loop by 2 test(s):",
            f"      {T_LIST}",
            f"      {T_DELETE}",
        ]
    )
    assert_no_asyncpg_fallout(result)


def test_log_file_gets_one_json_line_per_mismatch(
    cached_engine_suite: Path, run: RunPytest, pytester: pytest.Pytester
) -> None:
    """LOOPGUARD_LOG_FILE: one JSON object per mismatch, naming the node ids involved; and
    one record when test 1's loop closes while the pool still holds its connection (LG106)."""
    log_file = pytester.path / "lg.jsonl"
    result = run("--loopguard", env={"LOOPGUARD_LOG_FILE": str(log_file)})
    result.assert_outcomes(passed=1, failed=2)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    [leak] = [r for r in lines if r["event"] == "loopguard.loop_closed_with_connections"]
    assert leak["code"] == "LG106"
    assert leak["level"] == "warning"
    assert leak["held"] == 1
    assert leak["bound_during"] == f"{T_CREATE} (call)"
    assert leak["used_during"] == f"{T_CREATE} (teardown)"
    assert leak["created_at"] == f"src/configs/db.py:{CACHED_DB_LINE}"
    records = [r for r in lines if r["event"] != "loopguard.loop_closed_with_connections"]
    assert len(records) == 2
    for record, user in zip(records, [T_LIST, T_DELETE]):
        assert record["event"] == "loopguard.loop_mismatch"
        assert record["level"] == "error"
        assert record["code"] == "LG101"
        assert record["action"] == "raised"
        assert record["created_at"] == f"src/configs/db.py:{CACHED_DB_LINE}"
        assert record["created_in"] == "get_async_engine"
        assert record["bound_during"] == f"{T_CREATE} (call)"
        assert record["used_during"] == f"{user} (call)"
        assert record["owner_loop_closed"] is True
        assert record["pool_class"] == "AsyncAdaptedQueuePool"
    assert records[0]["owner_loop_id"] == records[1]["owner_loop_id"]
    assert records[0]["current_loop_id"] != records[1]["current_loop_id"]


FULL_FILE_LINE = (
    "loopguard: the log file '/dev/full' failed (OSError: [Errno 28] No space left on device); "
    "records it cannot take are dropped (said once per process)."
)


def test_a_failing_log_file_is_named_in_the_summary(
    cached_engine_suite: Path, run: RunPytest
) -> None:
    """LOOPGUARD_LOG_FILE=/dev/full in warn mode: the tests pass as without the file, and the
    loopguard section says once that the file failed (the stderr line was said during a
    passing test, whose captured output pytest drops)."""
    result = run("--loopguard-mode=warn", env={"LOOPGUARD_LOG_FILE": "/dev/full"})
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(["*= loopguard =*", "    2 × warned; *", FULL_FILE_LINE])
    assert output(result).count(FULL_FILE_LINE) == 1


def test_inherited_pytest_current_test_is_not_reported(
    cached_engine_suite: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pytest run started from inside another test (CI wrappers, pytester) inherits the
    parent's PYTEST_CURRENT_TEST; an engine created at import time must still be reported as
    created outside any test, not "during" the parent's test."""
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "outer/test_outer.py::test_parent (call)")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tb=short", "--loopguard")
    result.assert_outcomes(passed=1, failed=2)
    assert "outer/test_outer.py" not in output(result)
    result.stdout.fnmatch_lines(
        [
            f"E     created at:    src/configs/db.py:{CACHED_DB_LINE} in get_async_engine "
            "(outside any test, no event loop running)",
        ]
    )


POOL_PY = """
    import os

    import asyncpg

    _pool = None


    async def get_pool():
        global _pool
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["POOL_DSN"], min_size=1, max_size=1)
        return _pool
"""

POOL_TESTS_PY = """
    from src.pool import get_pool


    async def test_pool_first():
        assert await (await get_pool()).fetchval("select 1") == 1


    async def test_pool_second():
        assert await (await get_pool()).fetchval("select 2") == 2
"""


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_passwords_reach_neither_the_output_nor_the_log_file(
    cached_engine_suite: Path,
    run: RunPytest,
    db_url: str,
    pg_env: str,
    pytester: pytest.Pytester,
    mode: str,
) -> None:
    """An engine with a password in its URL's userinfo and query, an asyncpg pool with one in
    its DSN's query: the failures (or warnings), the records structlog prints, the loopguard
    summary and the JSON-lines file show each URL with ``***`` for the password."""
    engine_url = make_url(db_url).set(password=SECRET).update_query_dict({"password": SECRET})
    separator = "&" if "?" in pg_env else "?"
    pool_dsn = f"{pg_env}{separator}password={quote(SECRET, safe='')}"
    write(pytester.path, {"src/pool.py": POOL_PY, "tests/test_pool.py": POOL_TESTS_PY})
    log_file = pytester.path / "lg.jsonl"
    env = {
        "DATABASE_URL": engine_url.render_as_string(hide_password=False),
        "POOL_DSN": pool_dsn,
        "LOOPGUARD_LOG_FILE": str(log_file),
    }
    result = run("--tb=short", f"--loopguard-mode={mode}", env=env)
    if mode == "raise":
        result.assert_outcomes(passed=2, failed=3)
    else:  # the engine heals; the pool cannot move, and asyncpg's own error follows
        result.assert_outcomes(passed=4, failed=1, warnings=3)
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {record["code"] for record in records} == {"LG101", "LG103", "LG106"}
    # SQLAlchemy's rendering, with *** for both passwords (it would quote a literal ***).
    engine_shown = (
        engine_url.update_query_dict({"password": "MASKED"})
        .render_as_string(hide_password=True)
        .replace("MASKED", "***")
    )
    pool_shown = f"{pg_env}{separator}password=***"
    assert {(record["code"], record["url"]) for record in records} == {
        ("LG101", engine_shown),
        ("LG106", engine_shown),
        ("LG103", pool_shown),
    }
    summary = result.stdout.lines[
        result.stdout.lines.index(
            next(line for line in result.stdout.lines if "= loopguard =" in line)
        ) :
    ]
    pool_line = line_of(POOL_PY, "create_pool(")
    assert [line for line in summary if line.startswith("  LG1")] == [
        f"  LG103 src/pool.py:{pool_line} in get_pool  [{pool_shown}]",
        f"  LG101 src/configs/db.py:{CACHED_DB_LINE} in get_async_engine  [{engine_shown}]",
        f"  LG106 src/configs/db.py:{CACHED_DB_LINE} in get_async_engine  [{engine_shown}]: "
        f"{1 if mode == 'raise' else 3} × loopguard.loop_closed_with_connections during "
        + ", ".join([T_CREATE] if mode == "raise" else [T_CREATE, T_LIST, T_DELETE]),
    ]
    assert_no_secret([output(result), log_file.read_text()])


# -- scenario 2: engine warmed in a session fixture, tests on function loops ---------------

SESSION_DB_PY = """
    import os

    from sqlalchemy.ext.asyncio import create_async_engine


    def make_engine():
        return create_async_engine(os.environ["DATABASE_URL"], pool_size=5)
"""
SESSION_DB_LINE = line_of(SESSION_DB_PY, "return create_async_engine(")

SESSION_CONFTEST_PY = """
    import pytest_asyncio
    from sqlalchemy import text

    from app.db import make_engine


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def engine():
        engine = make_engine()
        async with engine.connect() as conn:  # warm: the pool keeps a session-loop connection
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()  # on the session loop, which owns the pool's connections
"""

SESSION_TESTS_PY = """
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


def session_fixture_suite(root: Path, test_loop_scope: Optional[str], *ini_extra: str) -> None:
    """A session-loop engine fixture; two tests on ``test_loop_scope`` (default: function)."""
    marker = (
        f'pytestmark = pytest.mark.asyncio(loop_scope="{test_loop_scope}")'
        if test_loop_scope
        else ""
    )
    write(
        root,
        {
            "pytest.ini": ini(*ini_extra),
            "app/__init__.py": "",
            "app/db.py": SESSION_DB_PY,
            "conftest.py": SESSION_CONFTEST_PY,
            "test_session_engine.py": SESSION_TESTS_PY.format(marker=marker),
        },
    )


# ``-s -p no:logging``: nothing is captured, so whatever the session fixture's teardown
# (engine.dispose() after the last test) logs or prints reaches the run's stderr.
UNCAPTURED = ("-s", "-p", "no:logging")


@needs_loop_scope
def test_scenario2_raise_mode_blames_the_loop_scope_and_teardown_stays_clean(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Raise mode: both function-loop tests fail with LoopMismatchError saying the owner loop
    is open but idle and pointing at the fixture's loop scope; the session fixture's dispose()
    on its own loop then runs without any error, log record or asyncpg protocol fallout."""
    session_fixture_suite(pytester.path, None)
    result = run("--tb=short", "--loopguard", *UNCAPTURED)
    result.assert_outcomes(failed=2, errors=0)
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            f"E     created at:    app/db.py:{SESSION_DB_LINE} in make_engine "
            "(during test_session_engine.py::test_one (setup))",
            "E     bound:         first connection opened during "
            "test_session_engine.py::test_one (setup), at *, on loop #*, "
            "which is still open but not running",
            "E     used now:      during test_session_engine.py::test_one (call) *",
            # The engine is made in app/db.py, but by the fixture: the cause names it.
            "E     likely cause:  it belongs to a loop that is still open but not running: the "
            "engine is created by the session-scoped fixture 'engine' at "
            f"conftest.py:{line_of(SESSION_CONFTEST_PY, '@pytest_asyncio.fixture(')}, whose loop "
            "scope is wider than the test's (the test runs on a loop of its own).",
            "E     fix:           *loop_scope*",
            "E   loopguard.LoopMismatchError: *",
            "E     used now:      during test_session_engine.py::test_two (call) *",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"  LG101 app/db.py:{SESSION_DB_LINE} in make_engine  *",
            "    2 × raised; first bound during test_session_engine.py::test_one (setup)",
        ]
    )
    assert_no_asyncpg_fallout(result)
    stderr = result.stderr.str()
    assert "Exception closing connection" not in stderr
    assert "Event loop is closed" not in stderr
    assert "Traceback" not in stderr


@needs_loop_scope
def test_scenario2_warn_mode_lets_the_tests_pass(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Warn mode: both tests pass, each with a LoopMismatchWarning, after the LG105 warning
    about the fixture's wider loop scope (once, at the first test's setup)."""
    session_fixture_suite(pytester.path, None)
    result = run("--loopguard-mode=warn")
    result.assert_outcomes(passed=2, errors=0, warnings=3)
    result.stdout.fnmatch_lines(
        [
            "*LoopScopeMismatchWarning: fixture 'engine'*",
            "*LoopMismatchWarning: SQLAlchemy AsyncEngine used on event loop*",
            "*= loopguard =*",
            "    2 × warned; first bound during test_session_engine.py::test_one (setup)",
        ]
    )
    assert_no_asyncpg_fallout(result)


@needs_loop_scope
def test_scenario2_warn_mode_session_teardown_dispose_is_clean(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Warn mode "heals" the pool onto each test's loop; the session fixture's dispose() on the
    session loop must then not hit a connection of a closed test loop ("Exception closing
    connection ... Event loop is closed" logged by SQLAlchemy's pool)."""
    session_fixture_suite(pytester.path, None)
    result = run("--loopguard-mode=warn", *UNCAPTURED)
    result.assert_outcomes(passed=2, errors=0)
    stderr = result.stderr.str()
    assert "Exception closing connection" not in stderr
    assert "Event loop is closed" not in stderr
    assert_no_asyncpg_fallout(result)


@needs_loop_scope
def test_scenario2_tests_on_the_session_loop_are_left_alone(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The legitimate variant: tests marked loop_scope="session" share the fixture's loop;
    with --loopguard and every warning an error, all pass and loopguard stays silent."""
    session_fixture_suite(pytester.path, "session", "filterwarnings = error")
    result = run("--loopguard", "-W", "error", *UNCAPTURED)
    result.assert_outcomes(passed=2, warnings=0)
    result.stdout.fnmatch_lines(["loopguard: mode=raise (from the --loopguard option)*"])
    assert_silent(result)
    assert_no_asyncpg_fallout(result)
    assert "Traceback" not in result.stderr.str()


# -- a connection left checked out on a closed loop, collected while pytest renders a failure --
# (issue 11.10) The session fixture's AsyncSession checks a connection out on the first test's
# loop and cannot give it back (its teardown fails on the session loop), so the connection is
# left checked out when that loop closes, and is garbage from then on.  Whenever the collector
# gets to it, SQLAlchemy's finalizer terminates it: on the closed loop that raised "Event loop
# is closed", which SQLAlchemy logs with its traceback, and formatting a traceback calls
# ast.parse() on Python 3.11.  When that happens inside pytest's own ast.parse() of a failure's
# source, CPython 3.11.0-3.11.7 ends the outer parse with "SystemError: AST constructor
# recursion depth mismatch" (CPython gh-106905), and pytest stops with an INTERNALERROR.

LEAKED_CONNECTION_CONFTEST_PY = """
    import dataclasses, os
    import pytest_asyncio
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def engine():
        e = create_async_engine(os.environ["DATABASE_URL"])
        yield e
        await e.dispose()

    @pytest_asyncio.fixture(loop_scope="session")
    async def session(engine):
        async with AsyncSession(engine) as s:
            yield s

    @dataclasses.dataclass
    class Deps:
        engine: AsyncEngine

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def deps(engine):
        yield Deps(engine)
"""

LEAKED_CONNECTION_TESTS_PY = """
    import pytest
    from sqlalchemy import text

    @pytest.mark.asyncio
    async def test_uses_session(session):
        await session.execute(text("select 1"))

    @pytest.mark.asyncio
    async def test_uses_deps(deps):
        async with deps.engine.connect() as c:
            await c.execute(text("select 1"))
"""

# When the collector runs is up to allocation counts; this plugin fixes it where the issue's
# run had it: nothing is collected until pytest renders the first failure of a test body, and
# then the collection runs inside that rendering's first ast.parse() (the "compile" audit
# event fires before the tree is built; the first object the tree allocates collects).
COLLECT_INSIDE_AST_PARSE_PY = """
    import gc
    import sys

    import pytest

    armed = False


    def collect_inside_compile(event, args):
        global armed
        if event == "compile" and armed:
            armed = False
            gc.enable()


    def pytest_configure(config):
        sys.addaudithook(collect_inside_compile)
        gc.disable()


    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        global armed
        armed = call.when == "call" and call.excinfo is not None
        yield
        armed = False
"""


@needs_loop_scope
def test_connection_collected_while_pytest_renders_a_failure_is_no_internal_error(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Issue 11.10: the run ends normally and reports both errors (the session fixture's
    teardown error and the LoopMismatchError of the engine bound to the closed loop), with
    no INTERNALERROR, when the leaked connection is collected inside pytest's ast.parse().

    loopguard closes the socket of a connection whose loop is closed itself when SQLAlchemy
    closes or terminates it, so SQLAlchemy's finalizer has no exception to log there."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": LEAKED_CONNECTION_CONFTEST_PY,
            "test_z.py": LEAKED_CONNECTION_TESTS_PY,
            "collect_inside_ast_parse.py": COLLECT_INSIDE_AST_PARSE_PY,
        },
    )
    result = run("-p", "collect_inside_ast_parse", env={"LOOPGUARD": "1"})
    text = output(result)
    assert "INTERNALERROR" not in text
    assert "SystemError" not in text
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_z.py::test_uses_deps - loopguard.LoopMismatchError: *",
            # The session fixture's teardown closes, on the session loop, the connection its
            # session checked out on the test's loop: LG101 for a held connection (issue 12.1),
            # where asyncpg's RuntimeError came before.
            "ERROR test_z.py::test_uses_session - loopguard.LoopMismatchError: *",
        ],
        consecutive=False,
    )
    assert "Exception terminating connection" not in text


# -- scenario 10: the legitimate patterns stay silent ---------------------------------------

LEGIT_DB_PY = """
    import os

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    URL = os.environ["DATABASE_URL"]
    # NullPool keeps no connection, so sharing it across loops is fine.
    nullpool_engine = create_async_engine(URL, poolclass=NullPool)
    # Pooled, but conftest disposes it at the end of every test, on the test's loop.
    pooled_engine = create_async_engine(URL, pool_size=2)
"""

LEGIT_CONFTEST_PY = """
    import pytest_asyncio
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.db import URL, pooled_engine


    @pytest_asyncio.fixture
    async def engine():
        engine = create_async_engine(URL, pool_size=2)
        yield engine
        await engine.dispose()


    @pytest_asyncio.fixture(autouse=True)
    async def _dispose_pooled_engine():
        yield
        await pooled_engine.dispose()
"""

LEGIT_TESTS_PY = """
    import pytest
    from sqlalchemy import text

    from app.db import nullpool_engine, pooled_engine


    async def query(engine, n):
        async with engine.connect() as conn:
            return (await conn.execute(text(f"select {n}"))).scalar()


    @pytest.mark.parametrize("n", [1, 2, 3])
    async def test_per_test_engine(engine, n):
        assert await query(engine, n) == n


    @pytest.mark.parametrize("n", [1, 2, 3])
    async def test_module_level_nullpool_engine(n):
        assert await query(nullpool_engine, n) == n


    @pytest.mark.parametrize("n", [1, 2, 3])
    async def test_cached_engine_disposed_after_each_test(n):
        assert await query(pooled_engine, n) == n
"""


def test_scenario10_per_test_nullpool_and_disposed_engines_are_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Per-test engines disposed in teardown, a module-level NullPool engine and a cached
    pooled engine disposed after every test, each test on its own loop: with --loopguard and
    every warning an error, everything passes and loopguard says nothing at all."""
    write(
        pytester.path,
        {
            "pytest.ini": ini("filterwarnings = error"),
            "app/__init__.py": "",
            "app/db.py": LEGIT_DB_PY,
            "conftest.py": LEGIT_CONFTEST_PY,
            "test_legit.py": LEGIT_TESTS_PY,
        },
    )
    result = run("--loopguard", "-W", "error", *UNCAPTURED)
    result.assert_outcomes(passed=9, warnings=0)
    result.stdout.fnmatch_lines(["loopguard: mode=raise (from the --loopguard option)*"])
    assert_silent(result)
    assert_no_asyncpg_fallout(result)
    assert "Traceback" not in result.stderr.str()


ONE_LOOP_DB_PY = """
    import os

    from sqlalchemy.ext.asyncio import create_async_engine

    URL = os.environ["DATABASE_URL"]
    cached_engine = create_async_engine(URL, pool_size=2)  # pooled, shared by every test
"""

ONE_LOOP_CONFTEST_PY = """
    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.db import URL, cached_engine


    @pytest_asyncio.fixture(scope="session")
    async def engine():
        engine = create_async_engine(URL, pool_size=2)
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield engine
        await engine.dispose()


    @pytest_asyncio.fixture(scope="session", autouse=True)
    async def _dispose_cached_engine():
        yield
        await cached_engine.dispose()
"""

ONE_LOOP_TESTS_PY = """
    import pytest
    from sqlalchemy import text

    from app.db import cached_engine


    @pytest.mark.parametrize("n", [1, 2])
    async def test_session_fixture_engine(engine, n):
        async with engine.connect() as conn:
            assert (await conn.execute(text(f"select {n}"))).scalar() == n


    @pytest.mark.parametrize("n", [1, 2])
    async def test_cached_pooled_engine(n):
        async with cached_engine.connect() as conn:
            assert (await conn.execute(text(f"select {n}"))).scalar() == n
"""


@needs_default_test_loop_scope
def test_scenario10_one_session_loop_for_everything_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """asyncio_default_test_loop_scope = session and fixture loop scope session: a warmed
    session-fixture engine and a pooled module-level engine, shared by tests in two modules,
    all on one loop; with --loopguard and every warning an error, all pass silently."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(
                "asyncio_default_test_loop_scope = session",
                "filterwarnings = error",
                fixture_loop_scope="session",
            ),
            "app/__init__.py": "",
            "app/db.py": ONE_LOOP_DB_PY,
            "conftest.py": ONE_LOOP_CONFTEST_PY,
            "test_one_loop_a.py": ONE_LOOP_TESTS_PY,
            "test_one_loop_b.py": ONE_LOOP_TESTS_PY,
        },
    )
    result = run("--loopguard", "-W", "error", *UNCAPTURED)
    result.assert_outcomes(passed=8, warnings=0)
    result.stdout.fnmatch_lines(
        [
            "loopguard: mode=raise (from the --loopguard option)*",
            "asyncio: *asyncio_default_test_loop_scope=session*",
        ]
    )
    assert_silent(result)
    assert_no_asyncpg_fallout(result)
    assert "Traceback" not in result.stderr.str()


# -- engines created while conftest.py is imported --------------------------------------------

IMPORT_TIME_ENGINES_PY = """
    import os

    from sqlalchemy.ext.asyncio import create_async_engine

    engine_b = create_async_engine(os.environ["DATABASE_URL"])
"""
IMPORT_TIME_CONFTEST_PY = """
    import os

    import pytest
    from sqlalchemy.ext.asyncio import create_async_engine

    import app.engines  # creates engine_b, also while this conftest is imported

    ENGINE_A = create_async_engine(os.environ["DATABASE_URL"])


    @pytest.fixture
    def engine_a():
        return ENGINE_A
"""
IMPORT_TIME_TESTS_PY = """
    from sqlalchemy import text

    from app.engines import engine_b


    async def ping(engine):
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))


    async def test_binds_both(engine_a):
        await ping(engine_a)
        await ping(engine_b)


    async def test_uses_engine_a(engine_a):
        await ping(engine_a)


    async def test_uses_engine_b():
        await ping(engine_b)
"""


def test_engines_created_at_conftest_import_time_have_a_creation_site(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The plugin installs before conftest.py is imported: a module-level engine in the root
    conftest.py and one in an app module it imports both get their real creation site."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "app/__init__.py": "",
            "app/engines.py": IMPORT_TIME_ENGINES_PY,
            "conftest.py": IMPORT_TIME_CONFTEST_PY,
            "test_import_time.py": IMPORT_TIME_TESTS_PY,
        },
    )
    site_a = f"conftest.py:{line_of(IMPORT_TIME_CONFTEST_PY, 'ENGINE_A = create_async_engine')}"
    site_b = f"app/engines.py:{line_of(IMPORT_TIME_ENGINES_PY, 'engine_b = create_async_engine')}"
    result = run("--tb=short", "--loopguard")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: *",
            f"E     created at:    {site_a} in <module> (outside any test, no event loop running)",
            "E     used now:      during test_import_time.py::test_uses_engine_a (call) *",
            "E   loopguard.LoopMismatchError: *",
            f"E     created at:    {site_b} in <module> (outside any test, no event loop running)",
            "E     used now:      during test_import_time.py::test_uses_engine_b (call) *",
            "*= loopguard =*",
            "2 event-loop mismatches from 2 engines:",
        ]
    )
    result.stdout.fnmatch_lines([f"  LG101 {site_a} in <module>  *"])
    result.stdout.fnmatch_lines([f"  LG101 {site_b} in <module>  *"])
    assert "creation site unknown" not in result.stdout.str()
    assert "unknown: the engine was created before loopguard was installed" not in output(result)


# -- mode selection: header, precedence, install state ------------------------------------------

MODE_CONFTEST_PY = """
    import json
    import os

    import loopguard
    from sqlalchemy.pool import QueuePool


    def pytest_configure(config):
        def record_state_after_the_run():
            # Cleanups run after every plugin's pytest_unconfigure.
            state = {
                "installed": loopguard.is_installed(),
                "wrapped": hasattr(QueuePool._do_get, "__loopguard_wrapped__"),
            }
            path = os.path.join(os.path.dirname(__file__), "after_run.json")
            with open(path, "w") as file:
                json.dump(state, file)

        config.add_cleanup(record_state_after_the_run)
"""
MODE_TESTS_PY = """
    import os

    import loopguard
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import QueuePool


    def test_mode_in_effect():
        expected = os.environ["EXPECTED_LOOPGUARD_MODE"] or None
        assert loopguard.mode() == expected
        assert loopguard.is_installed() is (expected is not None)
        patched = expected is not None
        assert hasattr(QueuePool._do_get, "__loopguard_wrapped__") is patched
        assert hasattr(AsyncEngine.__init__, "__loopguard_wrapped__") is patched
"""


def mode_suite(
    root: Path, ini_mode: Optional[str] = None, *ini_extra: str, install: Optional[str] = None
) -> str:
    """A suite whose one test checks the mode in effect (EXPECTED_LOOPGUARD_MODE) and whose
    conftest.py records, after the run, whether loopguard is still installed.  ``install``:
    a call such as ``loopguard.install()`` at the end of conftest.py; returns its
    ``conftest.py:LINE``."""
    extra = [f"asyncio_loopguard = {ini_mode}"] if ini_mode is not None else []
    conftest = MODE_CONFTEST_PY + (f"\n    {install}\n" if install else "")
    write(
        root,
        {
            "pytest.ini": ini(*extra, *ini_extra),
            "conftest.py": conftest,
            "test_mode.py": MODE_TESTS_PY,
        },
    )
    return f"conftest.py:{line_of(conftest, install)}" if install else ""


OPTION = "the --loopguard option"
MODE_OPTION = "the --loopguard-mode option"
ENV = "the LOOPGUARD environment variable"
INI = "the asyncio_loopguard ini option"
MODE_CASES = [
    # id, command line, environment, ini value, mode in effect, where it came from
    ("default-off", [], {}, None, None, None),
    ("cli-flag-is-raise", ["--loopguard"], {}, None, "raise", OPTION),
    # A flag takes no value: the path after it stays a path (it was swallowed as the mode).
    ("cli-flag-before-path", ["--loopguard", "test_mode.py"], {}, None, "raise", OPTION),
    ("cli-warn", ["--loopguard-mode=warn"], {}, None, "warn", MODE_OPTION),
    ("cli-mode-spelling", ["--loopguard-mode", "RAISE"], {}, None, "raise", MODE_OPTION),
    ("cli-flag-and-mode", ["--loopguard", "--loopguard-mode=warn"], {}, None, "warn", MODE_OPTION),
    ("cli-off", ["--loopguard-mode=off"], {}, None, None, None),
    ("env-1", [], {"LOOPGUARD": "1"}, None, "raise", ENV),
    ("env-spelling", [], {"LOOPGUARD": " TRUE "}, None, "raise", ENV),
    ("env-warn", [], {"LOOPGUARD": "warn"}, None, "warn", ENV),
    ("env-0", [], {"LOOPGUARD": "0"}, None, None, None),
    ("ini-raise", [], {}, "raise", "raise", INI),
    ("ini-warn", [], {}, "warn", "warn", INI),
    ("cli-flag-beats-env", ["--loopguard"], {"LOOPGUARD": "warn"}, None, "raise", OPTION),
    (
        "cli-beats-env",
        ["--loopguard-mode=raise"],
        {"LOOPGUARD": "warn"},
        None,
        "raise",
        MODE_OPTION,
    ),
    ("cli-off-beats-env", ["--loopguard-mode=off"], {"LOOPGUARD": "1"}, None, None, None),
    ("cli-beats-ini", ["--loopguard-mode=warn"], {}, "raise", "warn", MODE_OPTION),
    ("env-beats-ini", [], {"LOOPGUARD": "warn"}, "raise", "warn", ENV),
    ("env-off-beats-ini", [], {"LOOPGUARD": "false"}, "on", None, None),
    ("empty-env-is-unset", [], {"LOOPGUARD": ""}, "warn", "warn", INI),
    (
        "no-autoload-with-p",
        ["-p", "asyncio_loopguard", "-p", "asyncio", "--loopguard"],
        {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        None,
        "raise",
        OPTION,
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "ini_mode", "mode", "source"),
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_mode_source_precedence_header_and_patches(
    pytester: pytest.Pytester,
    run: RunPytest,
    args: list[str],
    env: dict[str, str],
    ini_mode: Optional[str],
    mode: Optional[str],
    source: Optional[str],
) -> None:
    """--loopguard beats LOOPGUARD beats the ini option; the header names the mode and its
    source (or says off); the mode is in effect during the tests; off patches nothing; and
    after the run every patch is gone again."""
    mode_suite(pytester.path, ini_mode)
    result = run(*args, env={**env, "EXPECTED_LOOPGUARD_MODE": mode or ""})
    result.assert_outcomes(passed=1)
    if mode is None:
        result.stdout.fnmatch_lines(["loopguard: off"])
        result.stdout.no_fnmatch_line("loopguard: mode=*")
    else:
        result.stdout.fnmatch_lines([f"loopguard: mode={mode} (from {source}), {GUARDING}"])
    after = json.loads((pytester.path / "after_run.json").read_text())
    assert after == {"installed": False, "wrapped": False}


BAD_VALUE_CASES = [
    ("cli", ["--loopguard-mode=bogus"], {}, None, f"'bogus' from {MODE_OPTION}"),
    ("cli-empty", ["--loopguard-mode="], {}, None, f"'' from {MODE_OPTION}"),
    ("env", [], {"LOOPGUARD": "maybe"}, None, f"'maybe' from {ENV}"),
    ("ini", [], {}, "nope", f"'nope' from {INI}"),
    # Every setting is checked, also one that another setting overrides.
    ("ini-under-env", [], {"LOOPGUARD": "1"}, "nope", f"'nope' from {INI}"),
]


@pytest.mark.parametrize(
    ("args", "env", "ini_mode", "what"),
    [case[1:] for case in BAD_VALUE_CASES],
    ids=[case[0] for case in BAD_VALUE_CASES],
)
def test_invalid_mode_is_a_usage_error_naming_its_source(
    pytester: pytest.Pytester,
    run: RunPytest,
    args: list[str],
    env: dict[str, str],
    ini_mode: Optional[str],
    what: str,
) -> None:
    """An unknown mode from any source stops pytest with a usage error (exit code 4) that
    quotes the value, names where it came from and lists the valid values; no traceback."""
    mode_suite(pytester.path, ini_mode)
    result = run(*args, env={**env, "EXPECTED_LOOPGUARD_MODE": ""})
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: Invalid loopguard mode {what}. {VALID}"])
    assert "Traceback" not in result.stderr.str()
    result.stdout.no_fnmatch_line("collected*")


def test_a_log_file_that_cannot_be_opened_is_a_usage_error(
    pytester: pytest.Pytester, run: RunPytest
) -> None:
    """LOOPGUARD_LOG_FILE in a missing directory: a usage error naming the file and the
    variable, no traceback (it used to be an internal error with FileNotFoundError)."""
    mode_suite(pytester.path)
    bad = str(pytester.path / "no-such-dir" / "lg.jsonl")
    result = run("--loopguard", env={"LOOPGUARD_LOG_FILE": bad, "EXPECTED_LOOPGUARD_MODE": ""})
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: Cannot open the loopguard log file {bad!r} from the LOOPGUARD_LOG_FILE "
            "environment variable: No such file or directory."
        ]
    )
    assert "Traceback" not in output(result)


def test_the_flag_with_mode_off_is_a_usage_error(pytester: pytest.Pytester, run: RunPytest) -> None:
    """--loopguard (on) and --loopguard-mode=off contradict each other: a one-line usage error."""
    mode_suite(pytester.path)
    result = run("--loopguard", "--loopguard-mode=off", env={"EXPECTED_LOOPGUARD_MODE": ""})
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --loopguard turns loopguard on and --loopguard-mode=off turns it off: give one."]
    )
    assert "Traceback" not in result.stderr.str()


def test_invalid_env_mode_with_a_valid_cli_mode_is_a_usage_error(
    pytester: pytest.Pytester, run: RunPytest
) -> None:
    """--loopguard wins over LOOPGUARD, but a typo in LOOPGUARD must still end as a clean
    usage error (install() validates the variable even when unused), not as a traceback."""
    mode_suite(pytester.path)
    result = run("--loopguard", env={"LOOPGUARD": "maybe", "EXPECTED_LOOPGUARD_MODE": ""})
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: Invalid loopguard mode 'maybe' from {ENV}. {VALID}"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("args", "env", "ini_mode"),
    [
        (["--loopguard-mode=off"], {"LOOPGUARD": "1"}, None),
        ([], {}, "off"),
        ([], {"LOOPGUARD": "0"}, None),
    ],
    ids=["cli-off", "ini-off", "env-0"],
)
def test_an_explicit_off_also_turns_off_a_bare_install_in_conftest(
    pytester: pytest.Pytester,
    run: RunPytest,
    args: list[str],
    env: dict[str, str],
    ini_mode: Optional[str],
) -> None:
    """`pytest --loopguard-mode=off` (or the ini option's off, like LOOPGUARD=0) is off for
    the whole run: a bare loopguard.install() in conftest.py does nothing either."""
    mode_suite(pytester.path, ini_mode, install="loopguard.install()")
    result = run(*args, env={**env, "EXPECTED_LOOPGUARD_MODE": ""})
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: off"])


@pytest.mark.parametrize(
    ("args", "header"),
    [
        ([], f"loopguard: mode=warn (from loopguard run), {GUARDING}"),
        (["--loopguard"], "loopguard: mode=raise (from the --loopguard option), guarding *"),
    ],
    ids=["run-wins-over-its-env", "command-line-wins"],
)
def test_pytest_under_loopguard_run_says_who_installed_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str], header: str
) -> None:
    """`loopguard run --mode warn -- -m pytest`: the run installs loopguard in-process and sets
    LOOPGUARD for children; the header names `loopguard run`, not the variable it set, and
    only pytest's command line overrides it.  The session leaves it installed as it found it."""
    mode_suite(pytester.path)
    monkeypatch.setenv("EXPECTED_LOOPGUARD_MODE", "raise" if args else "warn")
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    command = [sys.executable, "-m", "loopguard", "run", "--mode", "warn", "--", "-m", "pytest"]
    result = pytester.run(*command, "-p", "no:cacheprovider", *args, timeout=120)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([header])
    after = json.loads((pytester.path / "after_run.json").read_text())
    assert after == {"installed": True, "wrapped": True}


CONFTEST_INSTALL_CASES = [
    # id, the call in conftest.py, command line, mode in effect, where it came from
    ("bare", "loopguard.install()", [], "raise", "install() at {site}"),
    (
        "explicit-beats-cli-off",
        'loopguard.install("warn")',
        ["--loopguard-mode=off"],
        "warn",
        "install() at {site}",
    ),
    (
        "bare-keeps-the-cli-mode",
        "loopguard.install()",
        ["--loopguard-mode=warn"],
        "warn",
        MODE_OPTION,
    ),
]


@pytest.mark.parametrize(
    ("call", "args", "mode", "source"),
    [case[1:] for case in CONFTEST_INSTALL_CASES],
    ids=[case[0] for case in CONFTEST_INSTALL_CASES],
)
def test_install_in_conftest_is_named_in_the_header_and_undone_at_the_end(
    pytester: pytest.Pytester, run: RunPytest, call: str, args: list[str], mode: str, source: str
) -> None:
    """loopguard.install() in conftest.py: the header names its line (or the option that had
    installed loopguard already: a bare install() keeps that mode); the session uninstalls
    at its end what it did not find installed."""
    site = mode_suite(pytester.path, install=call)
    result = run(*args, env={"EXPECTED_LOOPGUARD_MODE": mode})
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"loopguard: mode={mode} (from {source.format(site=site)}), {GUARDING}"]
    )
    after = json.loads((pytester.path / "after_run.json").read_text())
    assert after == {"installed": False, "wrapped": False}


def test_install_in_a_conftest_further_down_is_reported_after_collection(
    cached_engine_suite: Path, run: RunPytest
) -> None:
    """late/conftest.py is imported during collection (pytest imports conftest.py files of
    the rootdir and its test* directories first), after the header: the status line follows
    the collection count, and the summary is there as with --loopguard."""
    (cached_engine_suite / "tests" / "test_users.py").unlink()
    write(cached_engine_suite, {"late/conftest.py": INSTALL_CONFTEST_PY})
    write(cached_engine_suite, {"late/test_users.py": CACHED_TESTS_PY})
    site = f"late/conftest.py:{line_of(INSTALL_CONFTEST_PY, 'loopguard.install()')}"
    result = run("--tb=no")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "loopguard: off",
            "collected 3 items",
            f"loopguard: mode=raise (from install() at {site}), {GUARDING}",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 engine:",
            f"  LG101 src/configs/db.py:{CACHED_DB_LINE} in get_async_engine  *",
            "    used on another loop by 2 test(s):",
            "      late/test_users.py::test_list_users",
            "      late/test_users.py::test_delete_user",
        ]
    )


AUTOLOAD_OFF = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
RUN_PYTEST = [sys.executable, "-m", "loopguard", "run", "--", "-m", "pytest"]
WARNINGS_AS_ERRORS_CASES = [
    # id, command (None: pytest), arguments, environment, ini mode, install() in conftest.py
    ("env", None, [], {"LOOPGUARD": "1"}, None, False),
    ("flag", None, ["--loopguard"], {}, None, False),
    ("ini", None, [], {}, "raise", False),
    ("conftest-install", None, [], {}, None, True),
    ("env-and-conftest-install", None, [], {"LOOPGUARD": "1"}, None, True),
    ("p-entry-point-name", None, ["-p", "asyncio_loopguard"], {"LOOPGUARD": "1"}, None, False),
    (
        "p-entry-point-name-without-autoload",
        None,
        ["-p", "asyncio_loopguard", "-p", "asyncio", "--loopguard"],
        AUTOLOAD_OFF,
        None,
        False,
    ),
    (
        "p-module-without-autoload",
        None,
        ["-p", "loopguard.pytest_plugin", "-p", "asyncio", "--loopguard"],
        {**AUTOLOAD_OFF, "LOOPGUARD": "1"},
        None,
        False,
    ),
    ("loopguard-run", RUN_PYTEST, [], {}, None, False),
]


@pytest.mark.parametrize(
    ("command", "args", "env", "ini_mode", "conftest_install"),
    [case[1:] for case in WARNINGS_AS_ERRORS_CASES],
    ids=[case[0] for case in WARNINGS_AS_ERRORS_CASES],
)
def test_no_warning_of_its_own_under_filterwarnings_error(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    command: Optional[list[str]],
    args: list[str],
    env: dict[str, str],
    ini_mode: Optional[str],
    conftest_install: bool,
) -> None:
    """A project whose ini says `filterwarnings = error` (loopguard's own does) runs normally
    under every activation: the start-up hook imports loopguard before pytest marks the
    plugin's package for assertion rewriting, which must not warn (issue 11.1)."""
    install = "loopguard.install()" if conftest_install else None
    mode_suite(pytester.path, ini_mode, "filterwarnings = error", install=install)
    for name, value in {**env, "EXPECTED_LOOPGUARD_MODE": "raise"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    pytest_args = ["-p", "no:cacheprovider", *args]
    if command is None:
        result = pytester.runpytest_subprocess(*pytest_args, timeout=120)
    else:
        result = pytester.run(*command, *pytest_args, timeout=120)
    assert "PytestAssertRewriteWarning" not in output(result)
    assert result.ret == pytest.ExitCode.OK, output(result)
    result.assert_outcomes(passed=1, warnings=0)


def test_current_test_follows_the_variable_as_it_is_set_unset_and_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """current_test() reads PYTEST_CURRENT_TEST straight from os.environ's dict and keeps the
    last decoding: an unset variable is None again, a new value is read anew, and an
    os.environ replaced by another mapping is read through that mapping."""
    import os

    from loopguard import _context

    monkeypatch.setattr(_context, "in_pytest", True)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_a.py::test_x (setup)")
    assert _context.current_test() == "tests/test_a.py::test_x (setup)"
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert _context.current_test() is None
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/test_a.py::test_x (call)")
    assert _context.current_test() == "tests/test_a.py::test_x (call)"
    monkeypatch.setattr(os, "environ", {"PYTEST_CURRENT_TEST": "elsewhere (call)"})
    assert _context.current_test() == "elsewhere (call)"
    monkeypatch.setattr(_context, "in_pytest", False)
    assert _context.current_test() is None
