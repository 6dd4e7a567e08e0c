"""Every pool that keeps connections is guarded (issue 12.2): StaticPool, AssertionPool,
SingletonThreadPool (SQLAlchemy 1.4: 2.x refuses it for async engines), any QueuePool
subclass, and the pools create_async_pool_from_url() makes, with no AsyncEngine around them.

Real PostgreSQL through asyncpg and a real SQLite file through aiosqlite; real loops.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import sqlalchemy.ext.asyncio
from guard_helpers import display_path, marker_line, silence_checked
from pgserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AssertionPool, AsyncAdaptedQueuePool, NullPool, Pool, StaticPool
from sqlalchemy.util import greenlet_spawn
from teststack import SQLALCHEMY

import loopguard
from loopguard.integrations import _sqlalchemy_facts

pytestmark = pytest.mark.usefixtures("_guard")

MODES = ["raise", "warn"]
THIS_FILE = display_path(__file__)


class ProjectPool(AsyncAdaptedQueuePool):
    """A QueuePool subclass of the kind projects write (here: counts its checkouts)."""

    def _do_get(self) -> Any:
        self.gets = getattr(self, "gets", 0) + 1
        return super()._do_get()


POOL_CLASSES: list[Any] = [StaticPool, AssertionPool, ProjectPool]
DRIVERS = ["asyncpg", "aiosqlite"]


@pytest.fixture
def url_of(pg_dsn: str, tmp_path: Path) -> Callable[[str], str]:
    def url(driver: str) -> str:
        if driver == "aiosqlite":
            pytest.importorskip("aiosqlite")
            return f"sqlite+aiosqlite:///{tmp_path / 'pools.db'}"
        return sqlalchemy_url(pg_dsn, driver=driver)

    return url


@pytest.fixture
def disposed(_guard: None) -> Iterator[list[Any]]:
    """Engines and pools to dispose at teardown (warn mode: dead loops' connections are
    closed without them)."""
    made: list[Any] = []
    yield made
    loopguard.install("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in made:
            if isinstance(item, AsyncEngine):
                asyncio.run(item.dispose())
            else:
                asyncio.run(greenlet_spawn(item.dispose))


async def _job(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text("select 1"))).scalar()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("pool_class", POOL_CLASSES, ids=lambda cls: cls.__name__)
def test_every_pool_that_keeps_connections_is_guarded(
    pool_class: type[Pool],
    driver: str,
    mode: str,
    url_of: Callable[[str], str],
    disposed: list[Any],
) -> None:
    """The second asyncio.run() reuses the first one's connection: raise mode stops it
    before any I/O (LG101, the pool class named); warn mode releases it and reconnects."""
    engine = create_async_engine(url_of(driver), poolclass=pool_class)
    disposed.append(engine)
    assert asyncio.run(_job(engine)) == 1
    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_job(engine))
        assert excinfo.value.code == "LG101"
        assert excinfo.value.record["pool_class"] == pool_class.__name__
        assert excinfo.value.owner_loop_closed is True
    else:

        async def twice() -> list[Any]:
            return [await _job(engine), await _job(engine)]

        with pytest.warns(loopguard.LoopMismatchWarning, match="stale connections") as caught:
            assert asyncio.run(twice()) == [1, 1]  # healed: the pool belongs to this loop now
        assert len([w for w in caught if w.category is loopguard.LoopMismatchWarning]) == 1
    if pool_class is ProjectPool:
        pool = engine.sync_engine.pool
        assert isinstance(pool, ProjectPool)
        assert pool.gets >= 2  # its own _do_get ran, under the guard's


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("pool_class", POOL_CLASSES, ids=lambda cls: cls.__name__)
def test_pools_used_correctly_are_silent(
    pool_class: type[Pool],
    driver: str,
    mode: str,
    url_of: Callable[[str], str],
    log_file: Path,
) -> None:
    """One loop for everything, and an engine disposed at the end of each loop: silent."""
    engine = create_async_engine(url_of(driver), poolclass=pool_class)

    async def many() -> None:
        for _ in range(5):
            assert await _job(engine) == 1
        await engine.dispose()

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(many())


def test_nullpool_is_not_tracked(url_of: Callable[[str], str], disposed: list[Any]) -> None:
    engine = create_async_engine(url_of("asyncpg"), poolclass=NullPool)
    disposed.append(engine)
    assert engine.sync_engine.pool not in _sqlalchemy_facts.POOLS
    for _ in range(3):
        assert asyncio.run(_job(engine)) == 1


@pytest.mark.skipif(
    SQLALCHEMY >= (2, 0), reason="SQLAlchemy 2.x refuses SingletonThreadPool for async engines"
)
@pytest.mark.parametrize("mode", MODES)
def test_singleton_thread_pool_is_guarded(
    mode: str, url_of: Callable[[str], str], disposed: list[Any]
) -> None:
    from sqlalchemy.pool import SingletonThreadPool

    engine = create_async_engine(url_of("aiosqlite"), poolclass=SingletonThreadPool)
    disposed.append(engine)
    assert asyncio.run(_job(engine)) == 1
    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError):
            asyncio.run(_job(engine))
    else:
        with pytest.warns(loopguard.LoopMismatchWarning):
            assert asyncio.run(_job(engine)) == 1


# -- a pool with no engine around it ------------------------------------------------------

needs_pool_factory = pytest.mark.skipif(
    not hasattr(sqlalchemy.ext.asyncio, "create_async_pool_from_url"),
    reason="create_async_pool_from_url() came in SQLAlchemy 2.0.10",
)


def _pool_job(pool: Any) -> Any:
    def use() -> Any:
        connection = pool.connect()
        try:
            cursor = connection.cursor()
            cursor.execute("select 1")
            value = cursor.fetchone()[0]
            cursor.close()
            return value
        finally:
            connection.close()

    return greenlet_spawn(use)


@needs_pool_factory
@pytest.mark.parametrize("driver", DRIVERS)
def test_bare_pool_is_reported_at_the_line_that_created_it(
    driver: str, url_of: Callable[[str], str], disposed: list[Any]
) -> None:
    from sqlalchemy.ext.asyncio import create_async_pool_from_url  # imported before install

    pool = create_async_pool_from_url(url_of(driver))  # bare-pool
    disposed.append(pool)
    assert asyncio.run(_pool_job(pool)) == 1
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pool_job(pool))
    error = excinfo.value
    assert error.code == "LG101"
    assert error.record["resource"] == "SQLAlchemy pool"
    assert error.created_at == f"{THIS_FILE}:{marker_line(__file__, 'bare-pool')}"
    assert str(error).startswith(
        f"SQLAlchemy pool used on event loop #{error.record['current_loop_id']}, but its pooled "
        f"connections belong to loop #{error.record['owner_loop_id']}; stopped before any I/O."
    )
    assert "\n  pool:          " in str(error)
    assert "likely cause:  the pool outlived the event loop it was first used on" in str(error)


@needs_pool_factory
def test_bare_pool_disposed_on_its_loop_is_silent(
    url_of: Callable[[str], str], log_file: Path
) -> None:
    pool = sqlalchemy.ext.asyncio.create_async_pool_from_url(url_of("asyncpg"))

    async def job() -> None:
        assert await _pool_job(pool) == 1
        await greenlet_spawn(pool.dispose)  # closes its connections on this, their own, loop

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(job())
