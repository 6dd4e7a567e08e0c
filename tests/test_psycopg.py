"""The SQLAlchemy guard works at the pool level: the same scenarios with psycopg 3's async driver.

psycopg's connections do not bind to a loop themselves, so cross-loop use of a pooled engine
often "works" until the pool's queue or the adapter's lock binds under contention; it is
still against SQLAlchemy's rule, and loopguard reports it the same way.
"""

from __future__ import annotations

import asyncio
import gc
import os
import warnings

import pytest
from engine_helpers import _uninstall, assert_silent_on_three_loops, engines
from pgserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from teststack import SQLALCHEMY, describe

import loopguard

pytest.importorskip("psycopg")
if SQLALCHEMY < (2, 0):
    pytest.skip(
        f"{describe('sqlalchemy')} has no postgresql+psycopg (psycopg 3) dialect; it came in 2.0",
        allow_module_level=True,
    )


__all__ = ["_uninstall", "engines"]  # fixtures


@pytest.fixture
def url(pg_dsn: str) -> str:
    return sqlalchemy_url(pg_dsn, driver="psycopg")


async def _pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


def test_without_loopguard_psycopg_crosses_loops_quietly(
    url: str, engines: list[AsyncEngine]
) -> None:
    """The baseline this driver gives: the same backend serves two loops, no error at all."""
    engine = create_async_engine(url)
    engines.append(engine)
    assert asyncio.run(_pid(engine)) == asyncio.run(_pid(engine))


def test_raise_mode_with_psycopg(url: str, engines: list[AsyncEngine]) -> None:
    """Scenario 3 with postgresql+psycopg: the second asyncio.run() raises before any I/O."""
    loopguard.install("raise")
    engine = create_async_engine(url)
    engines.append(engine)
    asyncio.run(_pid(engine))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pid(engine))
    assert excinfo.value.url is not None
    assert excinfo.value.url.startswith("postgresql+psycopg://")
    assert excinfo.value.owner_loop_closed is True


def test_warn_mode_with_psycopg_closes_stale_connections(
    url: str, engines: list[AsyncEngine]
) -> None:
    """warn mode: each new loop gets a new backend; old ones are finished, nothing warns
    'deleted while still open', descriptors stay flat."""
    loopguard.install("warn")
    engine = create_async_engine(url)
    engines.append(engine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pids = [asyncio.run(_pid(engine))]
        start = len(os.listdir("/proc/self/fd"))
        for _ in range(8):
            pids.append(asyncio.run(_pid(engine)))
            gc.collect()
        end = len(os.listdir("/proc/self/fd"))
    assert len(set(pids)) == 9
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert len([w for w in caught if w.category is loopguard.LoopMismatchWarning]) == 8
    assert end <= start + 1


def test_exhausted_pool_then_new_loop_with_psycopg(url: str, engines: list[AsyncEngine]) -> None:
    """Scenario 9: a pool that waited on loop A (its queue is bound to A) used on loop B."""
    loopguard.install("raise")
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=5)
    engines.append(engine)

    async def two_at_once() -> None:
        await asyncio.gather(_pid(engine), _pid(engine))

    asyncio.run(two_at_once())
    with pytest.raises(loopguard.LoopMismatchError):
        asyncio.run(_pid(engine))


@pytest.mark.parametrize("pattern", ["nullpool", "dispose-per-loop"])
def test_legitimate_patterns_stay_silent_with_psycopg(
    url: str, engines: list[AsyncEngine], pattern: str
) -> None:
    """NullPool shared across loops, and dispose() at the end of each loop: no record at all."""
    loopguard.install("raise")
    engine = (
        create_async_engine(url, poolclass=NullPool)
        if pattern == "nullpool"
        else (create_async_engine(url))
    )
    engines.append(engine)
    assert_silent_on_three_loops(engine, _pid, pattern == "dispose-per-loop")
