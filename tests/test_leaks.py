"""Scenario 7: dispose() on the wrong loop or outside any loop, and loops closed while a pool
still holds their connections. Each is a record (no exception: nothing has failed yet), and
whatever can be closed without the dead loop is closed."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog
from pgserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import loopguard

LEAK = "loopguard.loop_closed_with_connections"
FOREIGN_DISPOSE = "loopguard.dispose_on_foreign_loop"


@pytest.fixture(params=["raise", "warn"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    loopguard.install(request.param)
    yield request.param
    if loopguard.is_installed():
        loopguard.uninstall()


@pytest.fixture
def url(pg_dsn: str) -> str:
    return sqlalchemy_url(pg_dsn)


async def _pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


async def _backend_alive(engine: AsyncEngine, pid: int) -> bool:
    async with engine.connect() as conn:
        query = text("select count(*) from pg_stat_activity where pid = :pid")
        return bool((await conn.execute(query, {"pid": pid})).scalar_one())


def test_loop_closed_while_the_pool_holds_its_connection(url: str, mode: str) -> None:
    """asyncio.run() ends with the engine still holding a connection: reported as the loop
    closes (LG106), with the engine's creation site and how many connections are left."""
    engine = create_async_engine(url)
    with structlog.testing.capture_logs() as logs:
        asyncio.run(_pid(engine))
    [record] = logs
    assert record["event"] == LEAK
    assert record["code"] == "LG106"
    assert record["log_level"] == "warning"
    assert record["held"] == 1
    assert record["created_in"] == "test_loop_closed_while_the_pool_holds_its_connection"
    assert record["owner_loop_closed"] is False  # reported before the loop is gone
    engine.sync_engine.dispose()  # outside any loop: released without I/O (next test)


def test_dispose_outside_any_loop_releases_without_io(url: str, mode: str) -> None:
    """sync dispose (atexit-style) of an engine whose loop is closed: the connection's socket
    is closed directly, the backend exits, SQLAlchemy logs no error, nothing warns."""
    engine = create_async_engine(url)
    with structlog.testing.capture_logs():
        pid = asyncio.run(_pid(engine))
    with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.sync_engine.dispose()
        gc.collect()
    [record] = logs
    assert record["event"] == FOREIGN_DISPOSE
    assert record["code"] == "LG104"
    assert (record["released"], record["sockets_closed"]) == (1, 1)
    assert record["current_loop_id"] is None
    assert record["owner_loop_closed"] is True
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    checker = create_async_engine(url, pool_size=1)

    async def gone() -> bool:
        for _ in range(50):
            if not await _backend_alive(checker, pid):
                return True
            await asyncio.sleep(0.02)
        return False

    with structlog.testing.capture_logs():
        assert asyncio.run(gone())
        asyncio.run(checker.dispose())


def test_dispose_on_another_loop(url: str, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """asyncio.run(engine.dispose()) on a new loop: LG104 names both loops; SQLAlchemy's
    'Exception closing connection' never happens."""
    engine = create_async_engine(url)
    with structlog.testing.capture_logs():
        asyncio.run(_pid(engine))
    with structlog.testing.capture_logs() as logs, caplog.at_level(logging.ERROR):
        asyncio.run(engine.dispose())
    [record] = logs
    assert record["code"] == "LG104"
    assert record["current_loop_id"] != record["owner_loop_id"]
    assert record["used_at"].endswith("in test_dispose_on_another_loop")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy")] == []


def test_disposing_on_the_right_loop_is_silent(url: str, mode: str) -> None:
    """The documented pattern: dispose at the end of each loop. No record at all."""
    engine = create_async_engine(url)

    async def job() -> None:
        try:
            await _pid(engine)
        finally:
            await engine.dispose()

    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            asyncio.run(job())
    assert logs == []


def test_unused_engine_is_silent(url: str, mode: str) -> None:
    """An engine that never connected holds nothing: loops close without a record."""
    create_async_engine(url)
    with structlog.testing.capture_logs() as logs:
        asyncio.run(asyncio.sleep(0))
    assert logs == []
