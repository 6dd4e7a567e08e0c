"""The SQLAlchemy guard, driven directly against a real PostgreSQL through asyncpg.

Every test is a plain (sync) test function that creates and closes its own event loops with
``asyncio.run()`` / ``asyncio.new_event_loop()``, the way task runners, CLI commands and scripts
do; nothing here mocks asyncpg, SQLAlchemy or the loop. The ``_guard`` fixture (conftest.py,
used by every test here) installs loopguard in the test's ``mode`` (``raise`` unless the test
parametrizes ``mode``) and uninstalls it afterwards. Every engine goes into the ``engines``
list, whose teardown leaves no socket behind (see ``_shut_down``): the run has
``filterwarnings = error``, so a leaked transport would fail some later test with a
ResourceWarning.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import pickle
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, TypeVar

import asyncpg
import pytest
import structlog
from guard_helpers import (
    SECRET,
    XDIST_FIELDS,
    XDIST_RECORD,
    assert_no_secret,
    backend,
    current_test_id,
    display_path,
    dispose_as_loop_stops,
    error_texts,
    loop_in_thread,
    marker_line,
    on_new_loop,
    silence_checked,
    warnings_at_collection,
    written,
)
from pgserver import sqlalchemy_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    create_async_engine,
)
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool, QueuePool
from teststack import SQLALCHEMY

import loopguard
from loopguard._loops import loop_id
from loopguard.integrations import _sqlalchemy_facts, _sqlalchemy_pool

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``


def async_sessionmaker(bind: Any) -> Any:
    """SQLAlchemy 2.0's ``async_sessionmaker``, spelled so 1.4 has it too."""
    return sessionmaker(bind, class_=AsyncSession)


MODES = ["raise", "warn"]
EVENT = "loopguard.loop_mismatch"
# A loop closing while the pool still holds its connection is reported too (LG106).
LEAK_EVENT = "loopguard.loop_closed_with_connections"


def _queue_pool(engine: AsyncEngine) -> QueuePool:
    """The engine's pool, a QueuePool (AsyncAdaptedQueuePool) in these tests."""
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    return pool


def _only(
    logs: Sequence[MutableMapping[str, Any]], event: str = EVENT
) -> list[MutableMapping[str, Any]]:
    """The records of one event, after checking no unexpected kind of record is there."""
    assert {entry["event"] for entry in logs} <= {EVENT, LEAK_EVENT}
    return [entry for entry in logs if entry["event"] == event]


# The documented log fields (README "Structured logs"); warn mode adds WARN_KEYS.
LOG_KEYS = frozenset(
    {
        "code",
        "action",
        "resource",
        "url",
        "pool_class",
        "created_at",
        "created_in",
        "created_during",
        "bound_during",
        "bound_at",
        "used_at",
        "used_during",
        "owner_loop_id",
        "owner_loop_closed",
        "current_loop_id",
        "cause",
    }
)
LOG_KEYS |= XDIST_FIELDS  # under pytest-xdist, the worker's id too
WARN_KEYS = frozenset({"released", "sockets_closed"})
FILE_KEYS = frozenset({"event", "level", "timestamp", "pid", "schema"})
RESOURCE = "SQLAlchemy AsyncEngine"
POOL_CLASS = "AsyncAdaptedQueuePool"


THIS_FILE = display_path(__file__)


# -- helpers: jobs run on a loop -------------------------------------------------------


async def _pid(engine: AsyncEngine, loops: Optional[list[Any]] = None) -> int:
    """One checkout: the backend pid of the connection handed out on the running loop."""
    if loops is not None:
        loops.append(asyncio.get_running_loop())
    async with engine.connect() as conn:  # connect-site
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


CONNECT_LINE = marker_line(__file__, "connect-site")
USED_AT = f"{THIS_FILE}:{CONNECT_LINE} in _pid"


async def _wait_backends_gone(dsn: str, pids: list[int], timeout: float = 5.0) -> bool:
    """True once every backend in ``pids`` has exited (the server saw their sockets close)."""
    conn = await asyncpg.connect(dsn)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        query = "select count(*) from pg_stat_activity where pid = any($1::int[])"
        while await conn.fetchval(query, pids):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True
    finally:
        await conn.close()


def _shut_down(engine: AsyncEngine) -> None:
    """Release everything ``engine`` holds, on a live loop, leaking no socket.

    Connections whose loop is closed cannot be closed with I/O any more (plain SQLAlchemy
    ``dispose()`` on another loop logs "Event loop is closed" and leaks the socket), so
    loopguard's warn mode heals the pool first (closes their sockets directly), then the
    engine is disposed on the same, live loop.
    """
    loopguard.install("warn")

    async def heal_and_dispose() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loopguard.LoopMismatchWarning)
            async with engine.connect():
                pass
        await engine.dispose()

    for attempt in range(3):
        try:
            asyncio.run(heal_and_dispose())
            return
        except RuntimeError as exc:
            # A heal that meets a connection with an operation pending on a closed loop
            # raises "Event loop is closed" after dropping that one connection (see
            # test_pool_holding_a_connection_poisoned_on_a_foreign_loop): try again, so the
            # teardown still leaves nothing behind.
            if "Event loop is closed" not in str(exc) or attempt == 2:
                raise


def _queue_loop(engine: AsyncEngine) -> Any:
    """The loop the pool's asyncio.Queue is bound to (None: not created or never waited)."""
    queue = _queue_pool(engine)._pool.__dict__.get("_queue")
    return getattr(queue, "_loop", None)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def url(pg_dsn: str) -> str:
    """The throwaway server as a ``postgresql+asyncpg://`` URL."""
    return sqlalchemy_url(pg_dsn)


@pytest.fixture
def engines(_guard: None) -> Iterator[list[AsyncEngine]]:
    """Append every engine here: teardown shuts each down on a live loop (before uninstall)."""
    made: list[AsyncEngine] = []
    yield made
    for engine in made:
        _shut_down(engine)


# -- scenario 3: a module-level style engine used by asyncio.run() per job --------------


def test_second_asyncio_run_raises_before_any_io(
    url: str, pg_dsn: str, engines: list[AsyncEngine], request: pytest.FixtureRequest
) -> None:
    """raise mode, scenario 3: job 2 on a new loop gets LoopMismatchError with every fact
    exact, and the backend of the pooled connection sees no I/O at all."""
    engine, line = create_async_engine(url), sys._getframe().f_lineno
    engines.append(engine)
    pid, loop_a = on_new_loop(lambda: _pid(engine))
    assert loop_a.is_closed()
    before = asyncio.run(backend(pg_dsn, pid))
    assert before is not None and before["state"] == "idle"

    loops: list[Any] = []
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pid(engine, loops))
    err = excinfo.value
    [loop_b] = loops

    call_id = current_test_id(request)
    assert isinstance(err, RuntimeError)
    assert err.code == "LG101"
    assert err.resource == RESOURCE
    assert err.url == make_url(url).render_as_string(hide_password=True)
    assert err.pool_class == POOL_CLASS
    assert err.created_at == f"{THIS_FILE}:{line}"
    assert err.created_in == "test_second_asyncio_run_raises_before_any_io"
    assert err.created_during == call_id
    assert err.bound_during == call_id
    assert err.used_during == call_id
    assert err.used_at == USED_AT
    assert err.owner_loop_closed is True
    assert err.owner_loop_id == loop_id(loop_a)
    assert err.current_loop_id == loop_id(loop_b)
    assert err.owner_loop_id != err.current_loop_id
    assert err.record["action"] == "raised"
    assert err.record["cause"] == "closed-loop-test"
    # Nothing reached the server: the backend's last query and timestamps are unchanged ...
    assert asyncio.run(backend(pg_dsn, pid)) == before
    # ... and the connection went back into the pool, not checked out, not dropped.
    pool = _queue_pool(engine)
    assert (pool.checkedin(), pool.checkedout()) == (1, 0)
    # Asking again raises again: nothing was "fixed" behind the user's back.
    with pytest.raises(loopguard.LoopMismatchError):
        asyncio.run(_pid(engine))


def test_second_asyncio_run_message_is_exact(
    url: str, engines: list[AsyncEngine], request: pytest.FixtureRequest
) -> None:
    """raise mode: the full message, line by line, for the asyncio.run()-per-job pattern."""
    engine, line = create_async_engine(url), sys._getframe().f_lineno
    engines.append(engine)
    _, loop_a = on_new_loop(lambda: _pid(engine))
    loops: list[Any] = []
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pid(engine, loops))
    owner, current = loop_id(loop_a), loop_id(loops[0])
    call_id = current_test_id(request)
    masked = make_url(url).render_as_string(hide_password=True)
    assert str(excinfo.value).splitlines() == [
        f"SQLAlchemy AsyncEngine used on event loop #{current}, but its pooled connections "
        f"belong to loop #{owner}; stopped before any I/O.",
        f"  engine:        {masked} (AsyncAdaptedQueuePool)",
        f"  created at:    {THIS_FILE}:{line} in test_second_asyncio_run_message_is_exact "
        f"(during {call_id}, no event loop running)",
        f"  bound:         first connection opened during {call_id}, at {USED_AT}, "
        f"on loop #{owner}, which is now closed",
        f"  used now:      during {call_id} on loop #{current}, at {USED_AT}",
        "  likely cause:  the engine outlived the event loop it was first used on: it is "
        "cached (a module-level engine or async_sessionmaker, or an @lru_cache factory) while "
        "pytest-asyncio gives each test a new loop.",
        "  fix:           dispose it when its loop ends (`await engine.dispose()` in the "
        "teardown of a fixture on the test's loop), or create it per test in a fixture, or "
        "build it with `poolclass=NullPool` for tests.",
        "  (Background on this error: `loopguard explain LG101`, "
        "or LG101 on the Error codes page of the docs)",
    ]


def test_outside_pytest_the_cause_is_the_asyncio_run_pattern(
    url: str, engines: list[AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PYTEST_CURRENT_TEST (a script or CLI): *_during are None, the message says
    "outside any test" and the cause is closed-loop-run."""
    with monkeypatch.context() as env:
        env.delenv("PYTEST_CURRENT_TEST")
        engine = create_async_engine(url)
        engines.append(engine)
        asyncio.run(_pid(engine))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_pid(engine))
    err = excinfo.value
    assert (err.created_during, err.bound_during, err.used_during) == (None, None, None)
    assert err.record["cause"] == "closed-loop-run"
    message = str(err)
    assert "(outside any test, no event loop running)" in message
    assert f"first connection opened outside any test, at {USED_AT}, on loop" in message
    assert "used now:      outside any test on loop" in message
    assert "shared by several asyncio.run() calls" in message


def test_engine_created_inside_a_running_loop_says_so(url: str, engines: list[AsyncEngine]) -> None:
    """An engine created in a coroutine: created_at is that line, and the message does not
    claim "no event loop running"."""

    async def first_job() -> AsyncEngine:
        engine, line = create_async_engine(url), sys._getframe().f_lineno
        lines.append(line)
        await _pid(engine)
        return engine

    lines: list[int] = []
    engine = asyncio.run(first_job())
    engines.append(engine)
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pid(engine))
    assert excinfo.value.created_at == f"{THIS_FILE}:{lines[0]}"
    assert excinfo.value.created_in == "first_job"
    assert "no event loop running" not in str(excinfo.value)


@pytest.mark.parametrize("mode", ["warn"])
def test_second_asyncio_run_heals_in_warn_mode(
    url: str, pg_dsn: str, engines: list[AsyncEngine], mode: str
) -> None:
    """warn mode, scenario 3: job 2 warns at the user's line, then works on a NEW backend;
    the stale connection's socket was closed (its backend exits) and the record says so."""
    engine = create_async_engine(url)
    engines.append(engine)
    pid_a, _ = on_new_loop(lambda: _pid(engine))
    warns = pytest.warns(loopguard.LoopMismatchWarning)
    with structlog.testing.capture_logs() as logs, warns as caught:
        pid_b = asyncio.run(_pid(engine))
    assert pid_b != pid_a
    [warning] = caught.list
    assert (warning.filename, warning.lineno) == (str(Path(__file__)), CONNECT_LINE)
    message = str(warning.message)
    assert "its stale connections were released and it now belongs to the new loop" in message
    assert "which is now closed" in message
    [entry] = [e for e in logs if e["event"] == EVENT]
    assert entry["log_level"] == "warning"
    assert entry["action"] == "warned"
    assert entry["released"] >= 1
    assert entry["sockets_closed"] >= 1
    assert entry["owner_loop_closed"] is True
    assert asyncio.run(_wait_backends_gone(pg_dsn, [pid_a])), "old backend still connected"
    # Healed: the pool belongs to loop B now; loop C heals again, once, and keeps working.
    with pytest.warns(loopguard.LoopMismatchWarning):
        pid_c = asyncio.run(_pid(engine))
    assert pid_c not in (pid_a, pid_b)


# -- scenario 6: used after its loop closed -------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_session_used_after_its_loop_closed(
    url: str, engines: list[AsyncEngine], mode: str
) -> None:
    """Scenario 6 through a module-level style async_sessionmaker: the owner loop is closed
    explicitly; the message says "now closed" (raise: error, warn: healed warning)."""
    engine = create_async_engine(url)
    engines.append(engine)
    session_factory = async_sessionmaker(engine)

    async def job() -> int:
        async with session_factory() as session:
            return int((await session.execute(text("select 41 + 1"))).scalar_one())

    loop_a = asyncio.new_event_loop()
    try:
        assert loop_a.run_until_complete(job()) == 42
    finally:
        loop_a.close()

    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(job())
        err = excinfo.value
        assert err.owner_loop_closed is True
        assert err.owner_loop_id == loop_id(loop_a)
        assert f"on loop #{loop_id(loop_a)}, which is now closed" in str(err)
        assert "stopped before any I/O" in str(err)
    else:
        with pytest.warns(loopguard.LoopMismatchWarning, match="which is now closed"):
            assert asyncio.run(job()) == 42


# -- scenario 9: pool exhausted on loop A, then used on loop B --------------------------


async def _exhaust(engine: AsyncEngine) -> tuple[int, int]:
    """Two concurrent checkouts on a one-connection pool: the second waits on the queue."""
    async with engine.connect() as first:
        pid = (await first.execute(text("select pg_backend_pid()"))).scalar_one()
        waiter = asyncio.create_task(_pid(engine))
        await asyncio.sleep(0.05)
        assert not waiter.done(), "the second checkout should be waiting for the first"
    return int(pid), await waiter


@pytest.mark.parametrize("mode", MODES)
def test_pool_exhausted_on_one_loop_then_used_on_another(
    url: str, engines: list[AsyncEngine], mode: str
) -> None:
    """Scenario 9: the pool's asyncio.Queue got bound to loop A by waiting; on loop B raise
    mode raises LoopMismatchError (not asyncio's "bound to a different event loop"); warn
    mode rebuilds the queue, so queries and even waiting again work on loop B."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=5)
    engines.append(engine)
    (pid_1, pid_2), loop_a = on_new_loop(lambda: _exhaust(engine))
    assert pid_1 == pid_2  # one connection, handed over through the queue
    assert _queue_loop(engine) is loop_a  # precondition: the queue is bound to loop A

    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_pid(engine))
        assert "bound to a different event loop" not in str(excinfo.value)
        assert excinfo.value.owner_loop_id == loop_id(loop_a)
        assert _queue_loop(engine) is loop_a  # raise mode changes nothing
    else:
        with pytest.warns(loopguard.LoopMismatchWarning):
            (pid_3, pid_4), loop_b = on_new_loop(lambda: _exhaust(engine))
        assert pid_3 == pid_4 != pid_1
        assert _queue_loop(engine) is loop_b


@pytest.mark.parametrize("mode", MODES)
def test_exhausted_pool_whose_connections_were_disposed_moves_silently(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """An exhausted-then-disposed engine starts over: dispose() builds a new queue too."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=5)
    engines.append(engine)

    async def exhaust_then_dispose() -> None:
        await _exhaust(engine)
        await engine.dispose()

    with silence_checked(log_file):
        asyncio.run(exhaust_then_dispose())
        asyncio.run(exhaust_then_dispose())


# -- scenario 10: legitimate patterns stay silent ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nullpool_engine_shared_across_loops_is_silent(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """A NullPool engine keeps no connection: any number of loops may share it."""
    engine = create_async_engine(url, poolclass=NullPool)
    engines.append(engine)
    with silence_checked(log_file):
        pids = [asyncio.run(_pid(engine)) for _ in range(3)]
    assert len(set(pids)) == 3


@pytest.mark.parametrize("mode", MODES)
def test_engine_disposed_at_the_end_of_each_loop_is_silent(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """`await engine.dispose()` before each asyncio.run() returns: the next loop starts over
    (also through an execution_options() proxy, and with pre-ping)."""
    engine = create_async_engine(url, pool_pre_ping=True)
    engines.append(engine)
    proxy = engine.execution_options(isolation_level="REPEATABLE READ")

    async def job(which: AsyncEngine) -> int:
        try:
            await _pid(which)
            return await _pid(which)
        finally:
            await which.dispose()

    with silence_checked(log_file):
        for which in (engine, proxy, engine, proxy):
            asyncio.run(job(which))


@pytest.mark.parametrize("dispose_through", ["engine", "proxy"])
def test_disposed_engine_new_pool_is_guarded_and_keeps_the_creation_site(
    url: str, engines: list[AsyncEngine], dispose_through: str
) -> None:
    """dispose() replaces the pool (``pool.recreate()``): the new pool starts unbound, so loop B
    may use it, and is guarded like the first, so loop C is stopped, naming the engine's
    creation site (also when an ``execution_options()`` proxy disposes the shared pool)."""
    engine, line = create_async_engine(url), sys._getframe().f_lineno
    engines.append(engine)
    proxy = engine.execution_options(isolation_level="REPEATABLE READ")
    which = engine if dispose_through == "engine" else proxy

    async def use_and_dispose() -> None:
        await _pid(engine)
        await which.dispose()

    asyncio.run(use_and_dispose())
    first_pool = engine.sync_engine.pool
    _, loop_b = on_new_loop(lambda: _pid(engine))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pid(engine))
    assert engine.sync_engine.pool is first_pool  # no other dispose() in between
    assert excinfo.value.owner_loop_id == loop_id(loop_b)
    assert excinfo.value.created_at == f"{THIS_FILE}:{line}"


@pytest.mark.parametrize("mode", MODES)
def test_per_job_engines_are_silent(url: str, mode: str, log_file: Path) -> None:
    """An engine created and disposed inside each job (the per-test fixture pattern)."""

    async def job() -> int:
        engine = create_async_engine(url)
        try:
            return await _pid(engine)
        finally:
            await engine.dispose()

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(job())


@pytest.mark.parametrize("mode", MODES)
def test_one_loop_for_everything_is_silent(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """Many sequential and concurrent checkouts (pool waits included) on one loop."""
    engine = create_async_engine(url, pool_size=2, max_overflow=1, pool_timeout=5)
    engines.append(engine)

    async def everything() -> set[int]:
        pids = {await _pid(engine) for _ in range(10)}
        pids |= set(await asyncio.gather(*(_pid(engine) for _ in range(12))))
        session_factory = async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
        async with session_factory() as session:
            await session.execute(text("select 1"))
        await engine.dispose()
        return pids

    with silence_checked(log_file):
        pids = asyncio.run(everything())
    assert 1 <= len(pids) <= 3


@pytest.mark.parametrize("mode", MODES)
def test_sync_engine_is_untouched_on_any_thread_or_loop(
    tmp_path: Path, mode: str, log_file: Path
) -> None:
    """A plain sync engine with a QueuePool (file SQLite) used from several threads and from
    inside several event loops: loopguard leaves it alone."""
    # What SQLAlchemy 2 does for a file database by default, spelled out for 1.4 (which
    # would give it a NullPool and let sqlite3 refuse connections from other threads).
    engine = create_engine(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        poolclass=QueuePool,
        connect_args={"check_same_thread": False},
    )
    assert isinstance(engine.pool, QueuePool)  # the patched class: the test means something

    def query() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("select 1")).scalar_one())

    async def in_loop() -> int:
        return query()

    try:
        with silence_checked(log_file):
            results = [query()]
            results += [asyncio.run(in_loop()) for _ in range(3)]
            threads = [
                threading.Thread(target=lambda: results.append(asyncio.run(in_loop())))
                for _ in range(3)
            ]
            threads += [threading.Thread(target=lambda: results.append(query())) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        engine.dispose()
    assert results == [1] * 9


# -- execution_options() proxies share the creation site ------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_execution_options_proxy_reports_the_original_creation_site(
    url: str, engines: list[AsyncEngine], mode: str
) -> None:
    """An execution_options() proxy built on another line shares the pool: the mismatch names
    the create_async_engine line, and a heal through the proxy heals the original too."""
    engine, line = create_async_engine(url), sys._getframe().f_lineno
    engines.append(engine)
    proxy = engine.execution_options(isolation_level="SERIALIZABLE")
    asyncio.run(_pid(engine))

    with structlog.testing.capture_logs() as logs:
        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(_pid(proxy))
            assert excinfo.value.created_at == f"{THIS_FILE}:{line}"
        else:
            with pytest.warns(loopguard.LoopMismatchWarning):
                asyncio.run(_pid(proxy))
    [entry] = [e for e in logs if e["event"] == EVENT]
    assert entry["created_at"] == f"{THIS_FILE}:{line}"
    assert entry["created_in"] == "test_execution_options_proxy_reports_the_original_creation_site"

    if mode == "warn":

        async def both() -> None:
            await _pid(proxy)
            await _pid(engine)

        # Healed through the proxy: the original engine shares the pool, so it is fine on
        # the new loop... which asyncio.run() closed, so the next loop heals once more.
        with pytest.warns(loopguard.LoopMismatchWarning) as caught:
            asyncio.run(both())
        assert len(caught.list) == 1


# -- raise mode never touches a connection of another (idle) loop -------------------------


@pytest.mark.parametrize("pre_ping", [False, True], ids=["plain", "pre_ping"])
def test_raise_mode_leaves_an_idle_loops_connection_untouched(
    url: str, pg_dsn: str, engines: list[AsyncEngine], pre_ping: bool
) -> None:
    """Scenario 2 without pytest-asyncio: loop A (open, not running) owns the pool; a checkout
    on loop B raises before pre-ping or any I/O, and loop A gets the very same backend back,
    healthy (no "another operation is in progress")."""
    engine = create_async_engine(url, pool_pre_ping=pre_ping)
    engines.append(engine)
    loop_a = asyncio.new_event_loop()
    try:
        pid = loop_a.run_until_complete(_pid(engine))
        before = asyncio.run(backend(pg_dsn, pid))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_pid(engine))
        err = excinfo.value
        assert err.owner_loop_closed is False
        assert err.owner_loop_id == loop_id(loop_a)
        assert err.record["cause"] == "idle-loop-test"
        message = str(err)
        assert f"loop #{loop_id(loop_a)}, which is still open but not running" in message
        assert "fixture with a wider loop scope (session, package, module or class)" in message
        assert "loop_scope=" in message
        assert asyncio.run(backend(pg_dsn, pid)) == before  # no ping, no rollback, nothing
        pool = _queue_pool(engine)
        assert (pool.checkedin(), pool.checkedout()) == (1, 0)
        # Back on its own loop the same connection works, twice, and concurrently.
        assert loop_a.run_until_complete(_pid(engine)) == pid
        assert loop_a.run_until_complete(_pid(engine)) == pid

        async def two_at_once() -> list[int]:
            return list(await asyncio.gather(_pid(engine), _pid(engine)))

        assert pid in loop_a.run_until_complete(two_at_once())
        loop_a.run_until_complete(engine.dispose())
    finally:
        loop_a.close()


def test_idle_owner_loop_outside_pytest_gives_the_generic_cause(
    url: str, engines: list[AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside pytest an idle owner loop is reported as idle-loop-run (no fixture advice)."""
    engine = create_async_engine(url)
    engines.append(engine)
    loop_a = asyncio.new_event_loop()
    try:
        loop_a.run_until_complete(_pid(engine))
        with monkeypatch.context() as env:
            env.delenv("PYTEST_CURRENT_TEST")
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(_pid(engine))
        assert excinfo.value.record["cause"] == "idle-loop-run"
        advice = [
            line
            for line in str(excinfo.value).splitlines()
            if line.startswith(("  likely cause:", "  fix:"))
        ]
        assert len(advice) == 2
        assert "still open but not running" in advice[0]
        assert not any("fixture" in line or "pytest" in line for line in advice)
        loop_a.run_until_complete(engine.dispose())
    finally:
        loop_a.close()


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_idle_owner_loop_stays_usable(
    url: str, pg_dsn: str, engines: list[AsyncEngine], mode: str
) -> None:
    """warn mode with an idle owner loop A: loop B heals (A's backend exits), and loop A
    itself keeps working afterwards (its selector no longer watches the closed socket)."""
    engine = create_async_engine(url)
    engines.append(engine)
    loop_a = asyncio.new_event_loop()
    try:
        pid_a = loop_a.run_until_complete(_pid(engine))
        with pytest.warns(loopguard.LoopMismatchWarning, match="still open but not running"):
            pid_b = asyncio.run(_pid(engine))
        assert pid_b != pid_a
        assert asyncio.run(_wait_backends_gone(pg_dsn, [pid_a]))

        async def on_a() -> list[int]:
            # Fresh raw connections on loop A: likely reusing the closed socket's fd number.
            conns = [await asyncpg.connect(pg_dsn) for _ in range(3)]
            try:
                return [await c.fetchval("select 1") for c in conns]
            finally:
                for c in conns:
                    await c.close()

        assert loop_a.run_until_complete(on_a()) == [1, 1, 1]
        with pytest.warns(loopguard.LoopMismatchWarning, match="now closed"):
            pid_a2 = loop_a.run_until_complete(_pid(engine))
        assert pid_a2 not in (pid_a, pid_b)
        loop_a.run_until_complete(engine.dispose())
    finally:
        loop_a.close()


# -- an owner loop running in another thread ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_owner_loop_running_in_another_thread(
    url: str, engines: list[AsyncEngine], mode: str
) -> None:
    """Loop A runs in another thread and owns the pool: raise mode reports running-loop
    ("still running"); warn mode heals and both loops can still use the engine."""
    engine = create_async_engine(url)
    engines.append(engine)
    with loop_in_thread() as loop_a:

        def on_a(coro: Awaitable[T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop_a).result(10)  # type: ignore[arg-type]

        pid_a = on_a(_pid(engine))
        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(_pid(engine))
            err = excinfo.value
            assert err.owner_loop_closed is False
            assert err.record["cause"] == "running-loop"
            assert f"loop #{loop_id(loop_a)}, which is still running" in str(err)
            assert "another thread" in str(err)
            assert on_a(_pid(engine)) == pid_a
        else:
            with pytest.warns(loopguard.LoopMismatchWarning, match="still running"):
                asyncio.run(_pid(engine))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert on_a(_pid(engine)) != pid_a
            assert [w.category for w in caught] == [loopguard.LoopMismatchWarning]
        on_a(engine.dispose())


@pytest.mark.parametrize("mode", ["warn"])
def test_dispose_releases_another_loops_connection_among_its_own(
    url: str, pg_dsn: str, engines: list[AsyncEngine], mode: str
) -> None:
    """warn mode: loop A (another thread) holds a connection while loop B heals the pool and
    opens one of its own; A gives its connection back.  The pool now keeps connections of two
    loops: dispose() on B releases A's without I/O (LG104: one) and closes B's as usual."""
    engine = create_async_engine(url, pool_size=2)
    engines.append(engine)
    with loop_in_thread() as loop_a:

        def on_a(coro: Awaitable[T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop_a).result(10)  # type: ignore[arg-type]

        async def open_on_a() -> tuple[AsyncConnection, int]:
            conn = await engine.connect()
            pid = int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())
            return conn, pid

        held, pid_a = on_a(open_on_a())

        async def on_b() -> tuple[int, list[MutableMapping[str, Any]]]:
            with pytest.warns(loopguard.LoopMismatchWarning, match="still running"):
                pid_b = await _pid(engine)
            on_a(held.close())  # back into the pool, by its own loop
            with structlog.testing.capture_logs() as logs:
                await engine.dispose()
            return pid_b, logs

        pid_b, logs = asyncio.run(on_b())
    [record] = logs
    assert record["code"] == "LG104"
    assert record["owner_loop_id"] == loop_id(loop_a)
    assert (record["released"], record["sockets_closed"]) == (1, 1)
    assert asyncio.run(_wait_backends_gone(pg_dsn, [pid_a, pid_b]))


@pytest.mark.parametrize("mode", ["warn"])
def test_dispose_closes_a_running_loops_socket_when_that_loop_stops_next(
    url: str, pg_dsn: str, engines: list[AsyncEngine], mode: str
) -> None:
    """dispose() on B hands the release of loop A's idle connection to A (running in another
    thread), and A stops in the very iteration that runs it: the socket is closed all the same,
    nothing is left for the garbage collector to warn about."""
    engine = create_async_engine(url)
    engines.append(engine)
    with loop_in_thread() as loop_a:
        pid_a = asyncio.run_coroutine_threadsafe(_pid(engine), loop_a).result(10)
        [record] = dispose_as_loop_stops(engine, loop_a)
    assert (record["code"], record["released"], record["sockets_closed"]) == ("LG104", 1, 1)
    assert warnings_at_collection() == []
    assert asyncio.run(_wait_backends_gone(pg_dsn, [pid_a]))


# -- warn mode: no leaks ------------------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_closes_stale_sockets_without_leaks(
    url: str, pg_dsn: str, engines: list[AsyncEngine], mode: str
) -> None:
    """warn mode, owner loop closed, 20 loop switches: one warning per switch, no
    ResourceWarning (even after gc), and the number of open fds does not grow."""
    engine = create_async_engine(url, pool_size=2)
    engines.append(engine)

    async def job() -> list[int]:
        # Two connections per loop, so every heal releases two stale ones.
        return list(await asyncio.gather(_pid(engine), _pid(engine)))

    counts: list[int] = []
    pids: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            pids += asyncio.run(job())
            gc.collect()
            counts.append(_fd_count())
    categories = [w.category for w in caught]
    assert ResourceWarning not in categories, [str(w.message) for w in caught]
    assert categories == [loopguard.LoopMismatchWarning] * 19
    # Constant after warm-up: at most the two pooled sockets of the last loop stay open.
    assert max(counts[2:]) - min(counts[2:]) <= 1, counts
    assert counts[-1] <= counts[1] + 1, counts
    # And the server agrees: every backend but the last loop's two has exited.
    assert len(set(pids)) == 40
    assert asyncio.run(_wait_backends_gone(pg_dsn, pids[:-2]))


# -- structured log records -------------------------------------------------------------


def _with_password(url: str, password: str) -> Any:
    return make_url(url).set(password=password)


@pytest.mark.parametrize("mode", MODES)
def test_log_record_has_exactly_the_documented_fields(
    url: str, engines: list[AsyncEngine], request: pytest.FixtureRequest, mode: str
) -> None:
    """structlog gets one record per mismatch with exactly the documented keys, and the URL's
    password is masked everywhere (record, message, repr, pickled error)."""
    secret_url = _with_password(url, "s3cret")
    engine, line = create_async_engine(secret_url), sys._getframe().f_lineno
    engines.append(engine)
    masked = secret_url.render_as_string(hide_password=True)
    assert "***" in masked and "s3cret" not in masked

    with structlog.testing.capture_logs() as logs:
        _, loop_a = on_new_loop(lambda: _pid(engine))
        # Binding a loop is not an event; closing it with a pooled connection left is.
        assert [entry["event"] for entry in logs] == [LEAK_EVENT]
        loops: list[Any] = []
        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(_pid(engine, loops))
            texts = [str(excinfo.value), repr(excinfo.value)]
            texts.append(pickle.dumps(excinfo.value).decode("latin-1"))
        else:
            with pytest.warns(loopguard.LoopMismatchWarning) as caught:
                asyncio.run(_pid(engine, loops))
            texts = [str(w.message) for w in caught.list]

    [entry] = _only(logs[1:])
    extra = WARN_KEYS if mode == "warn" else frozenset()
    assert set(entry) == LOG_KEYS | extra | {"event", "log_level"}
    call_id = current_test_id(request)
    expected = {
        "event": EVENT,
        "log_level": "error" if mode == "raise" else "warning",
        "code": "LG101",
        "action": "raised" if mode == "raise" else "warned",
        "resource": RESOURCE,
        "url": masked,
        "pool_class": POOL_CLASS,
        "created_at": f"{THIS_FILE}:{line}",
        "created_in": "test_log_record_has_exactly_the_documented_fields",
        "created_during": call_id,
        "bound_during": call_id,
        "bound_at": USED_AT,
        "used_at": USED_AT,
        "used_during": call_id,
        "owner_loop_id": loop_id(loop_a),
        "owner_loop_closed": True,
        "current_loop_id": loop_id(loops[0]),
        "cause": "closed-loop-test",
        **XDIST_RECORD,
    }
    if mode == "warn":
        expected.update(released=1, sockets_closed=1)
    assert entry == expected
    if mode == "raise":
        assert excinfo.value.record == {k: v for k, v in entry.items() if k in LOG_KEYS}
    for blob in [*texts, json.dumps(entry)]:
        assert "s3cret" not in blob
    assert f"  engine:        {masked} (AsyncAdaptedQueuePool)" in texts[0]


@pytest.mark.parametrize("mode", MODES)
def test_json_lines_log_file(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """install(log_file=...): one complete JSON object per line per mismatch, with the
    documented fields plus timestamp, level, pid and schema; the password never appears."""
    engine = create_async_engine(_with_password(url, "s3cret"))
    engines.append(engine)
    asyncio.run(_pid(engine))
    expected_error = loopguard.LoopMismatchError if mode == "raise" else None
    records: list[dict[str, Any]] = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            if expected_error is not None:
                with pytest.raises(expected_error) as excinfo:
                    asyncio.run(_pid(engine))
                records.append(excinfo.value.record)
            else:
                with pytest.warns(loopguard.LoopMismatchWarning):
                    asyncio.run(_pid(engine))

    content = log_file.read_text(encoding="utf-8")
    assert content.endswith("\n")
    assert "s3cret" not in content
    everything = [json.loads(line) for line in content.splitlines()]
    assert {data["event"] for data in everything} <= {EVENT, LEAK_EVENT}
    lines = [line for line, data in zip(content.splitlines(), everything) if data["event"] == EVENT]
    assert len(lines) == 2
    extra = WARN_KEYS if mode == "warn" else frozenset()
    for line, logged in zip(lines, _only(logs)):
        data = json.loads(line)
        assert set(data) == LOG_KEYS | extra | FILE_KEYS
        assert data["event"] == EVENT
        assert data["level"] == ("error" if mode == "raise" else "warning")
        assert data["pid"] == os.getpid()
        assert data["schema"] == 1
        stamp = datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == timezone.utc.utcoffset(None)
        assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60
        # Same facts as the structlog record, after a JSON round trip.
        assert {k: data[k] for k in LOG_KEYS | extra} == {k: logged[k] for k in LOG_KEYS | extra}
    if mode == "raise":
        for line, record in zip(lines, records):
            data = json.loads(line)
            assert {k: data[k] for k in record} == record


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["userinfo", "query", "connect_args"])
def test_password_is_masked_in_every_message_and_record(
    url: str, engines: list[AsyncEngine], mode: str, where: str, log_file: Path
) -> None:
    """A password in the URL's userinfo, in its query (``?password=``) or in connect_args
    reaches no sink: not the LG101 error (message, repr, record, attributes, pickle) or
    warning, not the LG104 and LG106 records, not structlog, not the JSON-lines file; the
    URL shown is the engine's with ``***`` for the password."""
    base = make_url(url)
    if where == "userinfo":
        engine = create_async_engine(base.set(password=SECRET))
    elif where == "query":
        engine = create_async_engine(base.update_query_dict({"password": SECRET}))
    else:
        engine = create_async_engine(base, connect_args={"password": SECRET})
    engines.append(engine)
    texts: list[str] = []
    with written(log_file) as out:
        asyncio.run(_pid(engine))  # the loop closes with the pooled connection: LG106
        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(_pid(engine))  # LG101
            texts += error_texts(excinfo.value)
        else:
            asyncio.run(_pid(engine))  # LG101 warned, healed; its loop closes: LG106
        asyncio.run(engine.dispose())  # on a third loop: LG104
    assert (
        out.codes() == ["LG106", "LG101", "LG104"]
        if mode == "raise"
        else [
            "LG106",
            "LG101",
            "LG106",
            "LG104",
        ]
    )
    assert len(out.warnings) == (mode == "warn")
    assert_no_secret(texts + out.texts())
    [shown] = {entry["url"] for entry in out.events}
    masked = make_url(shown)
    if where == "userinfo":
        assert masked.password == "***"
    elif where == "query":
        assert masked.query["password"] == "***"
    unmasked = masked._replace(password=None).difference_update_query(["password"])
    assert unmasked.render_as_string(hide_password=False) == str(base)
    assert f"  engine:        {shown} (AsyncAdaptedQueuePool)" in (texts + out.texts())[0]


def test_log_file_from_the_environment(
    url: str, engines: list[AsyncEngine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOOPGUARD_LOG_FILE is honoured by install() and the record lands there."""
    path = tmp_path / "env.jsonl"
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(path))
    loopguard.install("raise")
    engine = create_async_engine(url)
    engines.append(engine)
    asyncio.run(_pid(engine))
    with pytest.raises(loopguard.LoopMismatchError):
        asyncio.run(_pid(engine))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [data["event"] for data in lines] == [LEAK_EVENT, EVENT]
    assert lines[1]["code"] == "LG101"


# -- the error object -------------------------------------------------------------------


def test_error_pickles_and_has_a_helpful_repr(
    url: str, engines: list[AsyncEngine], request: pytest.FixtureRequest
) -> None:
    """LoopMismatchError survives pickling (xdist, multiprocessing) with its message, record
    and attributes; its repr shows code, resource, site, test and whether the loop is closed."""
    engine, line = create_async_engine(url), sys._getframe().f_lineno
    engines.append(engine)
    asyncio.run(_pid(engine))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pid(engine))
    original = excinfo.value
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is loopguard.LoopMismatchError
    assert isinstance(copy, RuntimeError)
    assert str(copy) == str(original)
    assert copy.args == original.args
    assert copy.record == original.record
    for name in (
        "code",
        "resource",
        "url",
        "pool_class",
        "created_at",
        "created_in",
        "created_during",
        "bound_during",
        "used_at",
        "used_during",
        "owner_loop_id",
        "owner_loop_closed",
        "current_loop_id",
    ):
        assert getattr(copy, name) == getattr(original, name), name
    assert (
        repr(original)
        == repr(copy)
        == (
            f"LoopMismatchError(code='LG101', resource='SQLAlchemy AsyncEngine', "
            f"created_at='{THIS_FILE}:{line}', used_during='{current_test_id(request)}', "
            "owner_loop_closed=True)"
        )
    )
    assert type(original).__module__ == "loopguard"


# -- engines created before install() ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_engine_created_before_install_is_guarded(
    url: str, engines: list[AsyncEngine], mode: str
) -> None:
    """An engine created while loopguard was not installed is found at install(): guarded,
    with its creation site unknown, and the message says to install earlier."""
    loopguard.uninstall()
    engine = create_async_engine(url)
    engines.append(engine)
    loopguard.install(mode)
    asyncio.run(_pid(engine))
    with structlog.testing.capture_logs() as logs:
        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(_pid(engine))
            message = str(excinfo.value)
            assert excinfo.value.created_at is None
            assert excinfo.value.created_in is None
            assert excinfo.value.created_during is None
        else:
            with pytest.warns(loopguard.LoopMismatchWarning) as caught:
                asyncio.run(_pid(engine))
            message = str(caught.list[0].message)
    assert (
        "created at:    unknown: the engine was created before loopguard was installed" in message
    )
    [entry] = _only(logs)
    assert (entry["created_at"], entry["created_in"], entry["created_during"]) == (None, None, None)


def test_engine_used_before_install_is_guarded(
    url: str, pg_dsn: str, engines: list[AsyncEngine]
) -> None:
    """An engine created AND first used before install() (its pooled connection belongs to a
    loop that is closed now) is still stopped on a foreign loop, before any I/O."""
    loopguard.uninstall()
    engine = create_async_engine(url)
    engines.append(engine)
    pid, loop_a = on_new_loop(lambda: _pid(engine))
    loopguard.install("raise")
    before = asyncio.run(backend(pg_dsn, pid))

    outcome: dict[str, Any] = {}

    async def job() -> None:
        try:
            await _pid(engine)
        except Exception as exc:  # noqa: BLE001 - inspected below, without keeping it alive
            outcome["type"] = type(exc)
            outcome["text"] = str(exc)
            outcome["record"] = getattr(exc, "record", None)

    # Without the guard, asyncpg fails mid-I/O and SQLAlchemy leaks the socket of the loop-A
    # connection ("Event loop is closed" while terminating it): collect that leak here, so a
    # failure of this test cannot turn into a ResourceWarning in another one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        asyncio.run(job())
        gc.collect()
    assert outcome.get("type") is loopguard.LoopMismatchError, outcome.get("text")
    assert outcome["record"]["owner_loop_id"] == loop_id(loop_a)
    assert outcome["record"]["created_at"] is None
    assert asyncio.run(backend(pg_dsn, pid)) == before


def test_install_again_after_uninstall_keeps_the_pools_owner(
    url: str, engines: list[AsyncEngine]
) -> None:
    """uninstall() then install() in one process: the engine is tracked again and its pool
    is owned by its connections' loop as before (they keep loopguard's facts about them), so
    a foreign loop is stopped at the pool, and the owner's checkouts take the fast path."""
    engine = create_async_engine(url)
    engines.append(engine)
    pool = _queue_pool(engine)
    loop = asyncio.new_event_loop()
    try:
        first_pid = loop.run_until_complete(_pid(engine))
        loopguard.uninstall()
        loopguard.install("raise")
        assert loop.run_until_complete(_pid(engine)) == first_pid  # the owner: no error
        state = _sqlalchemy_facts.POOLS.get(pool)
        assert state is not None and state.binding is not None
        assert state.binding.loop._ref() is loop
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_pid(engine))
        assert excinfo.value.owner_loop_id == loop_id(loop)
        assert excinfo.value.owner_loop_closed is False
        assert (pool.checkedin(), pool.checkedout()) == (1, 0)
        assert loop.run_until_complete(_pid(engine)) == first_pid  # still the owner's
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()


# -- a pool whose connections are all gone may move ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pool_with_only_invalidated_connections_moves_silently(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """README: "A pool whose connections have all been closed or invalidated may move to a
    new loop too: nothing of the old loop is left in it." Invalidate on loop A (the
    connection is closed there, on its own loop), then use the engine on loop B."""
    engine = create_async_engine(url)
    engines.append(engine)

    async def use_and_invalidate() -> int:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("select pg_backend_pid()"))).scalar_one()
            await conn.invalidate()
        return int(pid)

    async def use_on_b() -> int:
        pid = await _pid(engine)
        # Disposed on its loop: the reconnected connection is known to be loop B's (its first
        # statement adopts it), so a loop B closing with it pooled would be LG106.
        await engine.dispose()
        return pid

    with silence_checked(log_file):
        pid_a = asyncio.run(use_and_invalidate())
        pid_b = asyncio.run(use_on_b())
    assert pid_b != pid_a


@pytest.mark.parametrize("mode", MODES)
def test_record_reconnected_on_a_new_loop_is_judged_by_its_new_connection(
    url: str, engines: list[AsyncEngine], mode: str, log_file: Path
) -> None:
    """SQLAlchemy reconnects a pool's connection record in place (after an invalidation, a
    recycle) and clears the record's ``info`` then; loopguard keeps its facts elsewhere and
    tells a new DBAPI connection by its id and by the record's ``starttime``.  The id alone is
    not enough: CPython may give the new connection the freed one's address, and the facts of
    the old connection (loop A, closed) would then be taken for the new one's (loop B): a false
    LG101.  That id reuse is put in place here by hand, the one thing this test arranges."""
    engine = create_async_engine(url, pool_size=1)
    engines.append(engine)
    pool = _queue_pool(engine)

    async def use_and_invalidate() -> int:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("select pg_backend_pid()"))).scalar_one()
            await conn.invalidate()
        return int(pid)

    async def twice() -> list[int]:
        # The record reconnects, on this loop.  No statement: a statement's check would
        # adopt the new connection for this loop at once (_sqlalchemy_held).
        async with engine.connect():
            pass
        [record] = _sqlalchemy_pool.queued_records(pool)
        facts = _sqlalchemy_facts.CONNECTIONS.get(record)  # still the old connection's (loop A)
        assert facts is not None
        assert facts.binding.loop() is not asyncio.get_running_loop()
        facts.dbapi_id = id(record.dbapi_connection)  # as if the new one got the old address
        first = await _pid(engine)
        second = await _pid(engine)
        await engine.dispose()  # on its loop, before it closes
        return [first, second]

    with silence_checked(log_file):
        pid_a = asyncio.run(use_and_invalidate())
        pids_b = asyncio.run(twice())
    assert pids_b[0] == pids_b[1] != pid_a


# -- a connection poisoned while checked out ------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pool_holding_a_connection_poisoned_on_a_foreign_loop(
    url: str, engines: list[AsyncEngine], mode: str
) -> None:
    """A connection checked out on loop A and then misused on loop B while still checked out
    with loopguard off (loopguard on stops that misuse: test_held_connections.py) fails in
    asyncpg and goes back into the pool with asyncpg's operation waiter still pending on the
    closed loop A.  The next checkout on loop C, with loopguard on again: raise mode raises
    LoopMismatchError; warn mode heals and works (it must not fail with "Event loop is
    closed" while dropping that connection)."""
    engine = create_async_engine(url)
    engines.append(engine)

    async def check_out() -> Any:
        conn = engine.connect()
        await conn.start()
        return conn

    conn = asyncio.run(check_out())

    async def misuse() -> None:
        with pytest.raises(RuntimeError, match="attached to a different loop"):
            await conn.execute(text("select 1"))
        await conn.close()

    loopguard.uninstall()
    asyncio.run(misuse())
    loopguard.install(mode)  # finds the engine again (created before this install)
    pool = _queue_pool(engine)
    assert (pool.checkedin(), pool.checkedout()) == (1, 0)  # precondition: back in the pool

    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError):
            asyncio.run(_pid(engine))
    else:
        with pytest.warns(loopguard.LoopMismatchWarning):
            assert asyncio.run(_pid(engine)) > 0


# -- dispose() of an engine whose connections belong to a closed loop ------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("poisoned", [False, True], ids=["idle", "poisoned"])
def test_dispose_on_a_new_loop_after_the_owner_loop_closed_is_clean(
    url: str,
    pg_dsn: str,
    engines: list[AsyncEngine],
    caplog: pytest.LogCaptureFixture,
    mode: str,
    poisoned: bool,
) -> None:
    """`await engine.dispose()` on a new loop when the pooled connection belongs to a closed
    loop (idle, or poisoned by a failed operation on a foreign loop while loopguard was
    off): no exception, no
    "Exception closing connection" log, no ResourceWarning, and the backend goes away."""
    engine = create_async_engine(url)
    engines.append(engine)

    if poisoned:

        async def check_out() -> tuple[Any, int]:
            conn = engine.connect()
            await conn.start()
            pid = (await conn.exec_driver_sql("select pg_backend_pid()")).scalar_one()
            await conn.commit()
            return conn, int(pid)

        conn, pid = asyncio.run(check_out())

        async def misuse() -> None:
            with pytest.raises(RuntimeError, match="attached to a different loop"):
                await conn.execute(text("select 1"))
            await conn.close()

        loopguard.uninstall()  # loopguard on stops the misuse (test_held_connections.py)
        asyncio.run(misuse())
        loopguard.install(mode)
    else:
        pid = asyncio.run(_pid(engine))
    pool = _queue_pool(engine)
    assert (pool.checkedin(), pool.checkedout()) == (1, 0)  # precondition

    sqlalchemy_errors = caplog.at_level("ERROR", logger="sqlalchemy")
    with sqlalchemy_errors, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(engine.dispose())
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == []
    assert asyncio.run(_wait_backends_gone(pg_dsn, [pid]))


# -- a connection never given back, collected after its loop closed (issue 11.10) ------------


class _Messages(logging.Handler):
    """Keeps the messages of the records it gets, and not the records: a record's exc_info
    would keep the failed call's frames alive (with SQLAlchemy 1.4, the coroutine its failed
    reset never awaited, which warns when it finally goes, in some later test)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _sqlalchemy_errors() -> Iterator[list[str]]:
    """The messages SQLAlchemy logs at ERROR in the block (kept from the root's handlers)."""
    logger = logging.getLogger("sqlalchemy")
    handler, propagate, level = _Messages(), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.ERROR)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


@pytest.mark.parametrize("mode", MODES)
def test_connection_left_checked_out_on_a_closed_loop_is_closed_when_collected(
    url: str, pg_dsn: str, engines: list[AsyncEngine], mode: str
) -> None:
    """A connection still checked out when its loop closed: when the collector takes it,
    SQLAlchemy closes or terminates it, which needs that closed loop.  loopguard closes its
    socket instead: SQLAlchemy logs no "Exception terminating/closing connection" traceback
    (formatted inside a collection, it breaks an ast.parse() running at that moment on CPython
    3.11.0 to 3.11.7: pytest's INTERNALERROR of issue 11.10), no ResourceWarning follows and the
    backend goes away.  SQLAlchemy 2's own warning about the connection not given back stays."""
    engine = create_async_engine(url)
    engines.append(engine)
    held: list[Any] = []

    async def check_out_and_keep() -> int:
        conn = await engine.connect()
        held.append(conn)
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())

    with structlog.testing.capture_logs() as logs:
        pid = asyncio.run(check_out_and_keep())
    assert [entry["code"] for entry in _only(logs, LEAK_EVENT)] == ["LG106"]
    pool = _queue_pool(engine)
    assert pool.checkedout() == 1  # precondition: its loop is closed, it is still out

    with _sqlalchemy_errors() as errors, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        held.clear()
        gc.collect()  # SQLAlchemy's finalizer closes the connection
        gc.collect()  # and what its failures left in reference cycles goes, warning here
    assert pool.checkedout() == 0
    closing = ("Exception closing", "Exception terminating")
    assert [message for message in errors if message.startswith(closing)] == []
    # SQLAlchemy before 1.4.3x neither closes nor terminates an async connection the collector
    # takes (it says so: "unsupported on async dbapi"): asyncpg's and asyncio's own
    # ResourceWarnings follow, with or without loopguard.
    if not any("unsupported on async dbapi" in str(w.message) for w in caught):
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    if SQLALCHEMY >= (2, 0):  # 1.4 logs a failed reset instead ("Exception during reset")
        assert any("non-checked-in connection" in str(w.message) for w in caught)
    assert asyncio.run(_wait_backends_gone(pg_dsn, [pid]))


def _calls_during(action: Callable[[], object]) -> int:
    """Python calls (generator resumptions included) made while ``action`` runs."""
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    gc.disable()  # no collection (and its weakref callbacks) inside the count
    sys.setprofile(count)
    try:
        action()
    finally:
        sys.setprofile(None)
        gc.enable()
    return calls


async def _use_and_dispose(engine: AsyncEngine) -> None:
    await _pid(engine)
    await engine.dispose()


def test_a_closing_loop_looks_only_at_the_pools_bound_on_it(
    url: str, engines: list[AsyncEngine]
) -> None:
    """LG106 at a loop's close visits the pools bound on that loop, not every tracked pool:
    disposed engines wait for the garbage collector (often a full collection, hundreds of
    tests later), and a scan of all of them at every loop close made each test of a long
    suite cost more than the one before."""

    def close_a_loop_with(waiting: int) -> int:
        while len(engines) < waiting:  # each used on its own loop, disposed, not yet collected
            engine = create_async_engine(url)
            engines.append(engine)
            asyncio.run(_use_and_dispose(engine))
        return _calls_during(asyncio.new_event_loop().close)

    assert close_a_loop_with(3) == close_a_loop_with(30)
