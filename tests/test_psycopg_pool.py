"""psycopg_pool's AsyncConnectionPool used directly (issue 12.3, LG112), against the real server.

Without loopguard a pool opened on one loop and used on the next waits for its workers (tasks
of the first loop) and fails with PoolTimeout after its timeout.  loopguard stops the call
before any waiting.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.ext.asyncio  # noqa: F401  (the held-connection hooks come with it)
from guard_helpers import current_test_id, display_path, marker_line, silence_checked

import loopguard
from loopguard.integrations import _psycopg_pool, _sqlalchemy_held

psycopg_pool = pytest.importorskip("psycopg_pool")
AsyncConnectionPool = psycopg_pool.AsyncConnectionPool

pytestmark = pytest.mark.usefixtures("_guard")
THIS_FILE = display_path(__file__)


def _pool(dsn: str, **kwargs: Any) -> Any:
    kwargs.setdefault("timeout", 1)
    return AsyncConnectionPool(dsn, open=False, min_size=1, max_size=4, **kwargs)  # pool-site


POOL_LINE = marker_line(__file__, "pool-site")


async def _open(pool: Any) -> Any:
    await pool.open(wait=True)  # open-site
    async with pool.connection() as conn:
        return await (await conn.execute("select 1")).fetchone()


async def _two_at_once(pool: Any) -> list[Any]:
    """Two connections held at once: the second needs the pool's workers to grow it."""
    holding: list[int] = []
    both = asyncio.Event()

    async def one(value: int) -> Any:
        async with pool.connection() as conn:  # use-site
            holding.append(value)
            if len(holding) == 2:
                both.set()
            await both.wait()
            return await (await conn.execute(f"select {value}")).fetchone()

    return list(await asyncio.gather(one(2), one(3)))


def _close(pool: Any) -> None:
    """Close a pool whose loop is closed: its workers died with that loop (close() would need
    them), so its idle connections are closed here, each on a loop of its own (psycopg's
    connections are not bound to a loop), and the pool is marked closed."""
    for conn in list(pool._pool):
        asyncio.run(conn.close())
    pool._pool.clear()
    pool._closed = True


def test_without_loopguard_the_second_loop_hangs_then_times_out(pg_dsn: str) -> None:
    loopguard.uninstall()
    pool = _pool(pg_dsn)
    assert asyncio.run(_open(pool)) == (1,)
    started = time.monotonic()
    with pytest.raises(psycopg_pool.PoolTimeout):
        asyncio.run(_two_at_once(pool))
    assert time.monotonic() - started >= 0.9  # the whole timeout, waiting for nothing
    _close(pool)


def test_raise_mode_stops_the_second_loop_at_once(
    pg_dsn: str, request: pytest.FixtureRequest
) -> None:
    pool = _pool(pg_dsn, timeout=30)
    assert asyncio.run(_open(pool)) == (1,)
    started = time.monotonic()
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_two_at_once(pool))
    assert time.monotonic() - started < 5  # not the 30 s timeout
    error = excinfo.value
    assert error.code == "LG112"
    record = error.record
    assert record["resource"] == "psycopg_pool AsyncConnectionPool"
    assert record["pool_class"] == "AsyncConnectionPool"
    assert record["operation"] == "getconn"
    assert record["created_at"] == f"{THIS_FILE}:{POOL_LINE}"
    assert record["bound_at"] == f"{THIS_FILE}:{marker_line(__file__, 'open-site')} in _open"
    assert record["used_at"] == f"{THIS_FILE}:{marker_line(__file__, 'use-site')} in one"
    assert record["used_during"] == current_test_id(request)
    assert record["cause"] == "closed-loop-test"
    assert record["owner_loop_closed"] is True
    assert "password" not in str(error).lower()
    assert "open the pool on the loop that uses it" in str(error)
    assert "(Background on this error at: docs/errors.md#lg112, code LG112)" in str(error)
    _close(pool)


def test_raise_mode_leaves_the_pool_to_its_own_loop(pg_dsn: str) -> None:
    pool = _pool(pg_dsn)
    loop_a = asyncio.new_event_loop()
    try:
        assert loop_a.run_until_complete(_open(pool)) == (1,)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_two_at_once(pool))
        assert excinfo.value.record["cause"] == "idle-loop-test"
        assert loop_a.run_until_complete(_two_at_once(pool)) == [(2,), (3,)]
        loop_a.run_until_complete(pool.close())
    finally:
        loop_a.close()


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_warns_then_lets_psycopg_pool_time_out(pg_dsn: str, mode: str) -> None:
    pool = _pool(pg_dsn)
    assert asyncio.run(_open(pool)) == (1,)
    with (
        pytest.warns(loopguard.LoopMismatchWarning, match="LG112") as caught,
        pytest.raises(psycopg_pool.PoolTimeout),
    ):
        asyncio.run(_two_at_once(pool))
    assert "loopguard let the call go ahead" in str(caught[0].message)
    _close(pool)


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_pools_opened_and_closed_on_their_loop_are_silent(
    pg_dsn: str, mode: str, log_file: Path
) -> None:
    shared = _pool(pg_dsn)

    async def per_job() -> None:
        async with AsyncConnectionPool(pg_dsn, open=False, max_size=4) as pool:
            assert await _two_at_once(pool) == [(2,), (3,)]

    async def one_loop_for_everything() -> None:
        await _open(shared)
        for _ in range(3):
            assert await _two_at_once(shared) == [(2,), (3,)]
        await shared.close()

    with silence_checked(log_file):
        for _ in range(2):
            asyncio.run(per_job())
        asyncio.run(one_loop_for_everything())


def test_uninstall_restores_every_patched_attribute_exactly() -> None:
    """The patch tables of psycopg_pool and of the held-connection hooks."""
    tables = [
        _psycopg_pool.PsycopgPoolIntegration.patches,
        _sqlalchemy_held.SQLAlchemyHeldIntegration.patches,
    ]
    loopguard.uninstall()
    before = [
        (patch.resolve(), patch.attribute, patch.resolve().__dict__.get(patch.attribute))
        for table in tables
        for patch in table
    ]
    loopguard.install("raise")
    for owner, attribute, _ in before:
        assert getattr(owner.__dict__[attribute], "__loopguard_wrapped__", False), attribute
    loopguard.uninstall()
    assert [
        (owner, attribute, owner.__dict__.get(attribute)) for owner, attribute, _ in before
    ] == before


def test_psycopg_pool_is_patched_at_its_first_import_never_imported_by_loopguard(
    tmp_path: Path,
) -> None:
    script = (
        "import sys, loopguard\n"
        "loopguard.install('raise')\n"
        "assert 'psycopg_pool' not in sys.modules\n"
        "import psycopg_pool\n"
        "assert getattr(psycopg_pool.AsyncConnectionPool._check_open_getconn,"
        " '__loopguard_wrapped__', False)\n"
        "loopguard.uninstall()\n"
        "assert not hasattr(psycopg_pool.AsyncConnectionPool._check_open_getconn,"
        " '__loopguard_wrapped__')\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.stdout.strip() == "ok", done.stderr
