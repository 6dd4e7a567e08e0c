"""Connections held open (issue 12.1): an AsyncConnection, an AsyncSession in a transaction, a
stream, a fixture's connection, used on a loop other than the one they were checked out on.

Real PostgreSQL through asyncpg and psycopg 3, and aiosqlite on a real SQLite file; real loops
(``asyncio.run()`` jobs, a loop kept open, a loop running in another thread) and real pytest
runs.  The checkout-time check cannot see these: nothing is checked out again.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy.exc
import structlog
import test_pytest_plugin as plugin_tests
from guard_helpers import (
    backend,
    current_test_id,
    display_path,
    marker_line,
    on_new_loop,
    silence_checked,
)
from pgserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool
from test_pytest_plugin import RunPytest, ini, output, write
from teststack import PYTEST_ASYNCIO, SQLALCHEMY, describe

import loopguard

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``

MODES = ["raise", "warn"]
THIS_FILE = display_path(__file__)
_clean_environment = plugin_tests._clean_environment
db_url = plugin_tests.db_url
run = plugin_tests.run

DRIVERS = ["asyncpg", "psycopg", "aiosqlite"]
SERIES = {
    "aiosqlite": "with recursive c(x) as (select 1 union all select x + 1 from c where x < 3000) "
    "select x from c",
}
PG_SERIES = "select generate_series(1, 3000)"


def _needs(driver: str) -> None:
    if driver == "psycopg":
        pytest.importorskip("psycopg")
        if SQLALCHEMY < (2, 0):
            pytest.skip(f"{describe('sqlalchemy')} has no postgresql+psycopg dialect")
    if driver == "aiosqlite":
        pytest.importorskip("aiosqlite")


@pytest.fixture
def make_engine(pg_dsn: str, tmp_path: Path, _guard: None) -> Iterator[Callable[..., AsyncEngine]]:
    """``make_engine(driver, **kw)``: an engine on the real server (or a real SQLite file);
    teardown disposes each with loopguard in warn mode, on a fresh loop (connections of dead
    loops are then closed without them), and collects what the test left."""
    made: list[AsyncEngine] = []

    def make(driver: str, **kwargs: Any) -> AsyncEngine:
        _needs(driver)
        if driver == "aiosqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'held.db'}"
            # A pooled engine, as SQLAlchemy 2.0 makes for a file (1.4's default is NullPool).
            kwargs.setdefault("poolclass", AsyncAdaptedQueuePool)
        else:
            url = sqlalchemy_url(pg_dsn, driver=driver)
        engine = create_async_engine(url, **kwargs)  # exact-engine
        made.append(engine)
        return engine

    yield make
    loopguard.install("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for engine in made:
            asyncio.run(engine.dispose())
        made.clear()
        # What a test's bug left behind (asyncpg's cancel coroutine and the transport of a
        # closed loop, without loopguard) is collected here, not in a later test's silence check.
        gc.collect()


def _series(driver: str) -> str:
    return SERIES.get(driver, PG_SERIES)


async def _open(engine: AsyncEngine) -> AsyncConnection:
    conn = await engine.connect()  # checkout-site
    await conn.execute(text("select 1"))
    return conn


CHECKOUT_LINE = marker_line(__file__, "checkout-site")


async def _select(conn: AsyncConnection, value: int = 2) -> Any:
    return (await conn.execute(text(f"select {value}"))).scalar()  # use-site


USE_LINE = marker_line(__file__, "use-site")


def _raises_mismatch() -> Any:
    return pytest.raises(loopguard.LoopMismatchError)


# -- the bug, without loopguard ------------------------------------------------------------


def test_without_loopguard_a_held_asyncpg_connection_fails_deep_in_asyncpg(
    make_engine: Callable[..., AsyncEngine],
) -> None:
    """The symptom this replaces: asyncpg's Future on a different loop, then 'another
    operation is in progress' for the next use."""
    loopguard.uninstall()
    engine = make_engine("asyncpg")
    conn = asyncio.run(_open(engine))
    with pytest.raises(RuntimeError, match="attached to a different loop"):
        asyncio.run(_select(conn))
    with pytest.raises(sqlalchemy.exc.InterfaceError, match="another operation is in progress"):
        asyncio.run(_select(conn))
    asyncio.run(conn.invalidate())


# -- raise mode: stopped before any I/O, with the facts ------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_held_connection_on_a_new_loop_raises_before_any_io(
    driver: str,
    make_engine: Callable[..., AsyncEngine],
    pg_dsn: str,
    request: pytest.FixtureRequest,
) -> None:
    """An AsyncConnection checked out in one asyncio.run() and used by the next: LG101 for the
    connection, with the test that checked it out; the server saw nothing of it."""
    engine = make_engine(driver)
    conn = asyncio.run(_open(engine))
    pid = None
    if driver != "aiosqlite":
        pid = asyncio.run(_backend_pid_of(conn))
        before = asyncio.run(backend(pg_dsn, pid))
    with structlog.testing.capture_logs() as logs, _raises_mismatch() as excinfo:
        asyncio.run(_select(conn))
    error = excinfo.value
    assert error.code == "LG101"
    assert error.record["resource"] == "SQLAlchemy connection"
    assert error.record["checked_out_during"] == current_test_id(request)
    assert error.record["operation"]
    assert error.record["owner_loop_closed"] is True
    assert error.record["cause"] == "closed-loop-test"
    assert error.record["used_at"] == f"{THIS_FILE}:{USE_LINE} in _select"
    assert error.record["bound_at"] == f"{THIS_FILE}:{CHECKOUT_LINE} in _open"
    assert [entry["code"] for entry in logs if entry["event"] == "loopguard.loop_mismatch"] == [
        "LG101"
    ]
    if pid is not None:
        after = asyncio.run(backend(pg_dsn, pid))
        assert after is not None and before is not None
        assert after["query_start"] == before["query_start"]  # not one byte went out
    asyncio.run(conn.invalidate())  # its loop is closed: dropped without I/O


async def _backend_pid_of(conn: AsyncConnection) -> int:
    """The backend pid, read without I/O from the driver connection's own state."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    info = getattr(driver, "info", None)  # psycopg
    return int(info.backend_pid if info is not None else driver.get_server_pid())


def test_held_connection_message_is_exact(
    make_engine: Callable[..., AsyncEngine], request: pytest.FixtureRequest
) -> None:
    engine = make_engine("psycopg")
    conn, loop_a = on_new_loop(lambda: _open(engine))  # loop A kept: "now closed"
    with _raises_mismatch() as excinfo:
        asyncio.run(_select(conn))
    test = current_test_id(request)
    record = excinfo.value.record
    created = f"{THIS_FILE}:{marker_line(__file__, 'exact-engine')}"
    assert str(excinfo.value) == "\n".join(
        [
            f"SQLAlchemy connection used on event loop #{record['current_loop_id']}, but it "
            f"was checked out on loop #{record['owner_loop_id']} and belongs to it; stopped "
            "before any I/O; it stays usable on its own loop.",
            f"  engine:        {record['url']} (AsyncAdaptedQueuePool)",
            f"  created at:    {created} in make (during {test}, no event loop running)",
            f"  checked out:   during {test} on loop #{record['owner_loop_id']}, which is now "
            f"closed (first opened at {THIS_FILE}:{CHECKOUT_LINE} in _open)",
            f"  used now:      during {test} on loop #{record['current_loop_id']}, at "
            f"{THIS_FILE}:{USE_LINE} in _select (statement)",
            "  likely cause:  the connection outlived the event loop it was checked out on: an "
            "AsyncConnection or an AsyncSession (in a transaction, or streaming a result) is "
            "kept by a fixture, a module global or a cache while pytest-asyncio gives each test "
            "a new loop.",
            "  fix:           open it on the test's loop and close it there: `async with "
            "engine.connect() as conn: yield conn` (or `async with AsyncSession(engine) as "
            "session: yield session`) in a fixture with the test's loop scope.",
            "  (Background on this error: `loopguard explain LG101`, "
            "or LG101 on the Error codes page of the docs)",
        ]
    )
    asyncio.run(conn.invalidate())
    assert loop_a.is_closed()


@pytest.mark.parametrize("driver", DRIVERS)
def test_raise_mode_leaves_the_connection_usable_on_its_own_loop(
    driver: str, make_engine: Callable[..., AsyncEngine]
) -> None:
    """Loop A stays open (a long-lived loop, say a fixture's); loop B's attempts are stopped,
    statement and commit alike, and loop A goes on with the same connection."""
    engine = make_engine(driver)
    loop_a = asyncio.new_event_loop()
    try:
        conn = loop_a.run_until_complete(_open(engine))
        for attempt in (_select(conn), conn.commit()):
            with _raises_mismatch() as excinfo:
                asyncio.run(attempt)
            assert excinfo.value.record["cause"] == "idle-loop-test"
        assert loop_a.run_until_complete(_select(conn, 7)) == 7
        loop_a.run_until_complete(conn.commit())
        loop_a.run_until_complete(conn.close())
        loop_a.run_until_complete(engine.dispose())
    finally:
        loop_a.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_session_in_a_transaction_reused_by_the_next_asyncio_run(
    driver: str, make_engine: Callable[..., AsyncEngine]
) -> None:
    engine = make_engine(driver)
    session = AsyncSession(engine)

    async def first() -> None:
        await session.execute(text("select 1"))  # begins the session's transaction

    async def second() -> Any:
        return (await session.execute(text("select 2"))).scalar()

    asyncio.run(first())
    with _raises_mismatch() as excinfo:
        asyncio.run(second())
    assert excinfo.value.record["resource"] == "SQLAlchemy connection"
    with _raises_mismatch():
        asyncio.run(session.commit())
    if hasattr(session, "invalidate"):  # SQLAlchemy 2.0+; on 1.4 the fixture collects it
        asyncio.run(session.invalidate())


@pytest.mark.parametrize("driver", DRIVERS)
def test_stream_consumed_on_another_loop(
    driver: str, make_engine: Callable[..., AsyncEngine]
) -> None:
    """A server-side cursor opened on one loop, its rows fetched on the next."""
    engine = make_engine(driver)
    held: dict[str, Any] = {}

    async def start() -> None:
        held["conn"] = conn = await engine.connect()
        held["result"] = await conn.stream(text(_series(driver)))
        assert len(await held["result"].fetchmany(10)) == 10

    async def rest() -> int:
        count = 0
        async for partition in held["result"].partitions(500):
            count += len(partition)
        return count

    asyncio.run(start())
    with _raises_mismatch() as excinfo:
        asyncio.run(rest())
    assert excinfo.value.code == "LG101"
    asyncio.run(held["conn"].invalidate())


@pytest.mark.parametrize("driver", DRIVERS)
def test_connection_of_a_loop_running_in_another_thread(
    driver: str, make_engine: Callable[..., AsyncEngine]
) -> None:
    engine = make_engine(driver)
    ready, stop = threading.Event(), threading.Event()
    held: dict[str, Any] = {}

    def owner() -> None:
        async def main() -> None:
            held["conn"] = await _open(engine)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.005)
            assert await _select(held["conn"], 5) == 5  # still fine on its own loop
            await held["conn"].close()
            await engine.dispose()

        asyncio.run(main())

    thread = threading.Thread(target=owner)
    thread.start()
    try:
        assert ready.wait(10)
        with _raises_mismatch() as excinfo:
            asyncio.run(_select(held["conn"]))
        assert excinfo.value.record["cause"] == "running-loop"
    finally:
        stop.set()
        thread.join(10)


# -- warn mode: closed without I/O, then SQLAlchemy's invalidation -------------------------


@pytest.mark.parametrize("mode", ["warn"])
@pytest.mark.parametrize("driver", DRIVERS)
def test_warn_mode_closes_the_held_connection_and_sqlalchemy_invalidates_it(
    driver: str, mode: str, make_engine: Callable[..., AsyncEngine], pg_dsn: str
) -> None:
    """What the caller sees: the warning, then SQLAlchemy's DBAPIError for a closed
    connection (connection_invalidated), PendingRollbackError until rollback(), then a new
    connection on the loop that uses it.  The old backend is gone (its socket was closed)."""
    engine = make_engine(driver)
    conn = asyncio.run(_open(engine))
    pid = asyncio.run(_backend_pid_of(conn)) if driver != "aiosqlite" else None
    if driver == "aiosqlite" and not _dialect_knows_aiosqlite_connection_closed():
        # SQLAlchemy 1.4 translates aiosqlite's "no active connection" but passes its
        # "Connection closed" through; which one comes depends on aiosqlite's worker thread.
        with (
            pytest.warns(loopguard.LoopMismatchWarning),
            pytest.raises((ValueError, sqlalchemy.exc.DBAPIError)) as old_excinfo,
        ):
            asyncio.run(_select(conn))
        assert re.search("Connection closed|no active connection", str(old_excinfo.value))
        return
    with (
        pytest.warns(loopguard.LoopMismatchWarning) as warned,
        pytest.raises(sqlalchemy.exc.DBAPIError) as excinfo,
    ):
        asyncio.run(_select(conn))
    assert excinfo.value.connection_invalidated is True
    assert "loopguard closed it without I/O on its loop and invalidated it" in str(
        warned[0].message
    )
    with pytest.raises(sqlalchemy.exc.PendingRollbackError):
        asyncio.run(_select(conn))

    async def recover() -> Any:
        await conn.rollback()
        value = await _select(conn, 9)
        await conn.close()
        return value

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert asyncio.run(recover()) == 9
    if pid is not None:
        assert asyncio.run(_gone(pg_dsn, pid))


def _dialect_knows_aiosqlite_connection_closed() -> bool:
    """Newer SQLAlchemy turns aiosqlite's ``ValueError("Connection closed")`` into a disconnect
    (``OperationalError``, then invalidation); 1.4's dialect knows only "no active connection"."""
    import sqlalchemy.dialects.sqlite.aiosqlite as dialect

    return "connection closed" in inspect.getsource(dialect).lower()


async def _gone(dsn: str, pid: int) -> bool:
    for _ in range(200):
        if await backend(dsn, pid) is None:
            return True
        await asyncio.sleep(0.01)
    return False


# -- silent on correct code ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("driver", DRIVERS)
def test_connection_used_on_its_own_loop_is_silent(
    driver: str, mode: str, make_engine: Callable[..., AsyncEngine], log_file: Path
) -> None:
    """Many statements, transactions, a stream and run_sync on one connection and one session,
    each on its own loop; per-job engines; one loop for everything; NullPool shared by jobs."""
    shared = make_engine(driver)
    nullpool = make_engine(driver, poolclass=NullPool)

    async def job(engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            for value in range(30):
                assert await _select(conn, value) == value
            await conn.commit()
            result = await conn.stream(text(_series(driver)))
            assert len([row async for row in result]) == 3000
            assert await conn.run_sync(lambda sync: sync.execute(text("select 4")).scalar()) == 4
        async with AsyncSession(engine) as session, session.begin():
            for value in range(10):
                assert (await session.execute(text(f"select {value}"))).scalar() == value

    async def per_job_engine() -> None:
        engine = make_engine(driver)
        await job(engine)
        await engine.dispose()

    async def everything_on_one_loop() -> None:
        for _ in range(3):
            await job(shared)
        await shared.dispose()

    with silence_checked(log_file):
        asyncio.run(everything_on_one_loop())
        for _ in range(2):
            asyncio.run(per_job_engine())
            asyncio.run(job(nullpool))


# -- pytest: a fixture's connection, tests on another loop scope ---------------------------

FIXTURE_CONFTEST = """
    import os

    import pytest_asyncio
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def engine():
        engine = create_async_engine(os.environ["DATABASE_URL"])
        yield engine
        await engine.dispose()


    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def conn(engine):
        async with engine.connect() as conn:
            yield conn
"""

FIXTURE_TESTS = """
    import pytest
    from sqlalchemy import text

    {marker}

    async def test_one(conn):
        assert (await conn.execute(text("select 1"))).scalar() == 1


    async def test_two(conn):
        assert (await conn.execute(text("select 2"))).scalar() == 2
"""

needs_loop_scope = pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 24),
    reason=f"loop_scope= needs pytest-asyncio >= 0.24 ({describe('pytest-asyncio')})",
)


@needs_loop_scope
def test_fixture_yields_a_connection_to_tests_on_another_loop_scope(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """A session-loop fixture yields an AsyncConnection; the tests run on their own loops:
    each is stopped with LG101, naming the fixture's checkout; asyncpg's errors never show."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": FIXTURE_CONFTEST,
            "test_conn.py": FIXTURE_TESTS.format(marker=""),
        },
    )
    result = run("--loopguard", "--tb=short", "-W", "ignore::pytest.PytestWarning")
    result.assert_outcomes(failed=2)
    # The raw errors, not the LG105 warning's words about them ("a RuntimeError about a
    # Future attached to a different loop"): no error line of the run names them.
    error_lines = [line for line in output(result).splitlines() if line.startswith("E ")]
    assert not [line for line in error_lines if "attached to a different loop" in line]
    assert not [line for line in error_lines if "another operation is in progress" in line]
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy connection used on event loop #*, but "
            "it was checked out on loop #* and belongs to it; stopped before any I/O; it stays "
            "usable on its own loop.",
            "*checked out:   during test_conn.py::test_one (setup) on loop #* (pytest-asyncio's "
            "session-scoped loop), which is still open but not running*",
            # The fixture pattern (idle-loop-fixture), naming the fixture that holds the
            # connection (conn), not the engine's.
            "*likely cause:  it belongs to a loop that is still open but not running: the "
            "SQLAlchemy connection is created by the session-scoped fixture 'conn' at "
            "conftest.py:*",
        ]
    )


@needs_loop_scope
def test_fixture_connection_with_the_tests_on_the_session_loop_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The fix: the tests run on the fixture's (session) loop: silent."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": FIXTURE_CONFTEST,
            "test_conn.py": FIXTURE_TESTS.format(
                marker='pytestmark = pytest.mark.asyncio(loop_scope="session")'
            ),
        },
    )
    result = run("--loopguard")
    result.assert_outcomes(passed=2)
    assert "loopguard.loop_mismatch" not in output(result)
    assert "LG101" not in output(result)
