"""SQLAlchemy's MySQL async dialects (aiomysql, asyncmy) under the SQLAlchemy guard, against a
real MariaDB server (``mariadb_socket``, tools/mysqlserver.py; skipped with the reason where
there is none).

The guard works on SQLAlchemy's pool, so it fires for any async dialect at checkout (LG101);
what depends on the driver is warn mode's heal: the stale connections of a closed loop are
closed without that loop (``_release`` knows each driver's transport), so nothing leaks and
nothing warns about an unclosed connection.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings
from typing import Any

import pytest
import structlog
from engine_helpers import _uninstall, assert_silent_on_three_loops, engines
from guard_helpers import dispose_as_loop_stops, loop_in_thread, warnings_at_collection
from mysqlserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool

import loopguard

__all__ = ["_uninstall", "engines"]  # fixtures
DRIVERS = ["aiomysql", "asyncmy"]


@pytest.fixture(params=DRIVERS)
def url(request: pytest.FixtureRequest, mariadb_socket: str) -> str:
    pytest.importorskip(request.param)
    return sqlalchemy_url(mariadb_socket, request.param)


async def _connection_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select connection_id()"))).scalar_one())


RAW_SCRIPT = """
import asyncio, sys
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(sys.argv[1])


async def job():
    async with engine.connect() as conn:
        return (await conn.execute(text("select 1"))).scalar_one()


for number in (1, 2):
    try:
        print(f"job {number}:", asyncio.run(job()))
    except Exception as exc:
        print(f"job {number}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
"""


def test_without_loopguard_a_cached_engine_fails_on_the_next_loop(url: str) -> None:
    """The raw symptom, in a process of its own (the broken connection it leaves behind is
    the driver's business): the pooled connection's streams belong to the first loop, and the
    second asyncio.run() fails inside the driver with asyncio's own RuntimeError."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTEST"))}
    done = subprocess.run(
        [sys.executable, "-c", RAW_SCRIPT, url], capture_output=True, text=True, env=env, timeout=60
    )
    jobs = done.stdout.splitlines()
    assert jobs[0] == "job 1: 1", done.stdout + done.stderr
    assert jobs[1].startswith("job 2: RuntimeError: "), jobs
    assert "attached to a different loop" in jobs[1] or "Event loop is closed" in jobs[1]
    assert "LoopMismatch" not in done.stdout + done.stderr


def test_raise_mode_stops_the_checkout_before_any_io(url: str, engines: list[AsyncEngine]) -> None:
    """LG101 fires for a MySQL async dialect as for asyncpg: at checkout, before any I/O; the
    pooled connection stays in the pool, untouched."""
    loopguard.install("raise")
    engine = create_async_engine(url)
    engines.append(engine)
    asyncio.run(_connection_id(engine))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_connection_id(engine))
    err = excinfo.value
    assert err.code == "LG101"
    assert err.url == url
    assert err.owner_loop_closed is True
    assert err.record["cause"] == "closed-loop-test"
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedin() == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_warn_mode_heals_closing_the_old_loops_connections_without_io(
    url: str, engines: list[AsyncEngine]
) -> None:
    """warn mode: each new loop gets a new server connection; the old one's socket is closed
    without its (closed) loop, so no descriptor leaks and the driver never warns about an
    unclosed connection or transport."""
    loopguard.install("warn")
    engine = create_async_engine(url)
    engines.append(engine)
    with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = [asyncio.run(_connection_id(engine))]
        gc.collect()
        start = len(os.listdir("/proc/self/fd"))
        for _ in range(6):
            ids.append(asyncio.run(_connection_id(engine)))
            gc.collect()
        end = len(os.listdir("/proc/self/fd"))
    assert len(set(ids)) == 7
    others = [w for w in caught if w.category is not loopguard.LoopMismatchWarning]
    assert [str(w.message) for w in others] == []
    assert len(caught) == 6
    healed = [entry for entry in logs if entry.get("code") == "LG101"]
    assert [(entry["released"], entry["sockets_closed"]) for entry in healed] == [(1, 1)] * 6
    assert end <= start


def test_dispose_closes_a_running_loops_socket_when_that_loop_stops_next(
    url: str, engines: list[AsyncEngine]
) -> None:
    """warn mode: dispose() on B hands the release of loop A's idle connection to A (running in
    another thread), and A stops in the very iteration that runs it: the socket is closed all
    the same, nothing is left for the garbage collector to warn about."""
    loopguard.install("warn")
    engine = create_async_engine(url)
    engines.append(engine)
    with loop_in_thread() as loop_a:
        asyncio.run_coroutine_threadsafe(_connection_id(engine), loop_a).result(10)
        [record] = dispose_as_loop_stops(engine, loop_a)
    assert (record["code"], record["released"], record["sockets_closed"]) == ("LG104", 1, 1)
    assert warnings_at_collection() == []


@pytest.mark.parametrize("pattern", ["nullpool", "dispose-per-loop"])
def test_legitimate_patterns_stay_silent(
    url: str, engines: list[AsyncEngine], pattern: str
) -> None:
    loopguard.install("raise")
    kwargs: dict[str, Any] = {"poolclass": NullPool} if pattern == "nullpool" else {}
    engine = create_async_engine(url, **kwargs)
    engines.append(engine)
    assert_silent_on_three_loops(engine, _connection_id, pattern == "dispose-per-loop")
