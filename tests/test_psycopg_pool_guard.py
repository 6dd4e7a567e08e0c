"""The psycopg_pool guard (LG112), driven against a real PostgreSQL.

Plain (sync) tests that make and close their own event loops (``asyncio.run()``,
``asyncio.new_event_loop()``, a loop in a thread); nothing mocks psycopg, psycopg_pool or the
loop.  The ``_guard`` fixture (conftest.py) installs loopguard in the test's ``mode``.  Pools
left open on a loop that is gone go into the ``pools`` fixture, whose teardown closes their
connections without that loop: the run has ``filterwarnings = error``, and psycopg warns
about a connection collected while still open.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg_pool
import pytest
import structlog
from guard_helpers import (
    SECRET,
    XDIST_FIELDS,
    assert_no_secret,
    backend,
    current_test_id,
    display_path,
    error_texts,
    install_round_trip,
    loop_in_thread,
    marker_line,
    on_new_loop,
    silence_checked,
    written,
)
from psycopg_pool import AsyncConnectionPool, AsyncNullConnectionPool, PoolTimeout
from teststack import PYTEST_ASYNCIO

import loopguard
from loopguard import _release
from loopguard._loops import loop_id
from loopguard.integrations import _psycopg_pool

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``

MODES = ["raise", "warn"]
EVENT = "loopguard.loop_mismatch"
THIS_FILE = display_path(__file__)
REPO = Path(__file__).resolve().parent.parent
# The fields of an LG112 record, as logged.
LOG_KEYS = frozenset(
    {
        "code",
        "action",
        "resource",
        "operation",
        "url",
        "name",
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


# -- jobs -----------------------------------------------------------------------------------------


async def _open_pool(dsn: str, timeout: float = 10.0, **kwargs: Any) -> AsyncConnectionPool:
    """A pool of one connection (two at most), opened and filled on the running loop."""
    pool: AsyncConnectionPool = AsyncConnectionPool(  # pool-site
        dsn, min_size=1, max_size=2, timeout=timeout, open=False, **kwargs
    )
    await pool.open(wait=True)  # open-site
    return pool


async def _select(pool: AsyncConnectionPool, number: int = 1) -> int:
    async with pool.connection() as conn:  # connection-site
        cursor = await conn.execute("select %s::int", (number,))
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def _pid(pool: AsyncConnectionPool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("select pg_backend_pid()")
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def _two_at_once(pool: AsyncConnectionPool) -> int:
    """A second connection while holding the first: the pool must open one."""
    async with pool.connection() as first, pool.connection() as second:  # two-site
        for conn in (first, second):
            await conn.execute("select 1")
    return 2


POOL_LINE = marker_line(__file__, "pool-site")
OPEN_LINE = marker_line(__file__, "open-site")
CONNECTION_LINE = marker_line(__file__, "connection-site")
TWO_LINE = marker_line(__file__, "two-site")


def _mismatches(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry.get("event") == EVENT]


def _close_without_its_loop(pool: AsyncConnectionPool) -> None:
    """Close a pool whose loop is gone: its idle connections' sockets, without any loop."""
    for conn in list(pool._pool):
        _release.close_without_loop(conn)
    pool._pool.clear()
    pool._closed = True


def _discard(pool: AsyncConnectionPool) -> None:
    if pool.closed:
        return
    loop = _psycopg_pool._tasks_loop(pool)
    if loop is not None and not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(pool.close())
    else:
        _close_without_its_loop(pool)


@pytest.fixture
def dsn(pg_dsn: str) -> str:
    return pg_dsn


@pytest.fixture
def pools(_guard: None) -> Iterator[list[AsyncConnectionPool]]:
    """Append pools here: teardown closes each, on its loop if it can still run."""
    made: list[AsyncConnectionPool] = []
    yield made
    for pool in made:
        _discard(pool)


# -- the bug, without loopguard -------------------------------------------------------------------


def test_without_loopguard_a_pool_of_an_earlier_loop_hangs_then_times_out(
    dsn: str, pools: list[AsyncConnectionPool]
) -> None:
    """The bug as psycopg_pool shows it (psycopg#737): a pool opened in one asyncio.run() and
    used in the next hands out the connection it holds, but the next connection it must open
    is a job for its worker tasks, which died with the first loop: the client waits the
    pool's whole timeout, then gets PoolTimeout."""
    loopguard.uninstall()
    pool, _ = on_new_loop(lambda: _open_pool(dsn, timeout=1.0))
    pools.append(pool)
    assert asyncio.run(_select(pool, 2)) == 2  # the idle connection: it "works"
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"couldn't get a connection after 1\.0+ sec"):
        asyncio.run(_two_at_once(pool))
    assert time.monotonic() - started >= 1.0


def test_with_loopguard_the_same_pool_is_stopped_at_once(
    dsn: str, pools: list[AsyncConnectionPool], request: pytest.FixtureRequest
) -> None:
    """raise mode: the second asyncio.run() gets LoopMismatchError at its first
    pool.connection(), with every fact exact, and the pool's connection sees no I/O."""
    loops: list[Any] = []

    async def first() -> int:
        pool = await _open_pool(dsn)
        pools.append(pool)
        return await _pid(pool)

    pid, loop_a = on_new_loop(first)
    [pool] = pools
    before = asyncio.run(backend(dsn, pid))
    assert before is not None and before["state"] == "idle"

    async def second() -> int:
        loops.append(asyncio.get_running_loop())
        return await _select(pool)

    started = time.monotonic()
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(loopguard.LoopMismatchError) as excinfo,
    ):
        asyncio.run(second())
    assert time.monotonic() - started < 1.0
    err = excinfo.value
    call_id = current_test_id(request)
    assert isinstance(err, RuntimeError)
    assert err.code == "LG112"
    assert err.resource == "psycopg_pool AsyncConnectionPool"
    assert err.url == dsn
    assert err.pool_class == "AsyncConnectionPool"
    assert err.record["name"] == pool.name
    assert err.created_at == f"{THIS_FILE}:{POOL_LINE}"
    assert err.created_in == "_open_pool"
    assert err.created_during == err.bound_during == err.used_during == call_id
    assert err.bound_at == f"{THIS_FILE}:{OPEN_LINE} in _open_pool"
    assert err.used_at == f"{THIS_FILE}:{CONNECTION_LINE} in _select"
    assert err.owner_loop_closed is True
    assert err.owner_loop_id == loop_id(loop_a)
    assert err.current_loop_id == loop_id(loops[0])
    assert err.record["action"] == "raised"
    assert err.record["cause"] == "closed-loop-test"
    assert err.record["operation"] == "AsyncConnectionPool.connection"
    [entry] = _mismatches(logs)
    assert set(entry) == LOG_KEYS | {"event", "log_level"}
    assert entry["log_level"] == "error"
    assert {k: entry[k] for k in LOG_KEYS} == err.record
    # Nothing reached the server, and the pool still holds its one idle connection.
    assert asyncio.run(backend(dsn, pid)) == before
    assert pool.get_stats()["pool_available"] == 1
    # Nothing was "fixed" behind the user's back: a third loop is stopped the same way.
    with pytest.raises(loopguard.LoopMismatchError):
        asyncio.run(_select(pool))


def test_message_is_exact(
    dsn: str, pools: list[AsyncConnectionPool], request: pytest.FixtureRequest
) -> None:
    pool, loop_a = on_new_loop(lambda: _open_pool(dsn))
    pools.append(pool)
    loops: list[Any] = []

    async def second() -> int:
        loops.append(asyncio.get_running_loop())
        return await _select(pool)

    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(second())
    owner, current = loop_id(loop_a), loop_id(loops[0])
    call_id = current_test_id(request)
    assert str(excinfo.value).splitlines() == [
        f"psycopg_pool AsyncConnectionPool used on event loop #{current}, but it belongs to "
        f"loop #{owner}, the loop that opened it; stopped before any I/O.",
        f"  pool:          {dsn} (AsyncConnectionPool {pool.name!r})",
        f"  created at:    {THIS_FILE}:{POOL_LINE} in _open_pool (during {call_id})",
        f"  bound:         opened during {call_id}, at {THIS_FILE}:{OPEN_LINE} in _open_pool, "
        f"on loop #{owner}, which is now closed",
        f"  used now:      during {call_id} on loop #{current}, at {THIS_FILE}:{CONNECTION_LINE}"
        " in _select (AsyncConnectionPool.connection)",
        "  likely cause:  the pool outlived the event loop that opened it: it is kept in a "
        "module global or a cache (opened during an earlier test, on that test's loop) while "
        "pytest-asyncio gives each test a new loop; its worker tasks died with that loop, so a "
        "connection it has to open never comes (a hang, then PoolTimeout).",
        "  fix:           open it in an async fixture on the tests' loop scope (`async with "
        "AsyncConnectionPool(conninfo, open=False) as pool: yield pool`), which closes it "
        "before that loop ends, or run every test that uses it on one loop (loop_scope=).",
        "  (Background on this error: `loopguard explain LG112`, or LG112 on the Error codes "
        "page of the docs)",
    ]


# -- every operation, and the pool left usable on its own loop ------------------------------------


def _operations(pool: AsyncConnectionPool, held: list[Any]) -> dict[str, Any]:
    """What each public method of the pool is, as a coroutine factory (loop B's calls)."""

    async def enter() -> None:
        async with pool:
            pass

    async def connection() -> None:
        async with pool.connection():
            pass

    operations = {
        "connection": connection,
        "getconn": pool.getconn,
        "putconn": lambda: pool.putconn(held[0]),
        "wait": pool.wait,
        "open": pool.open,
        "__aenter__": enter,
        "resize": lambda: pool.resize(1, 3),
        "check": pool.check,
        "close": pool.close,
    }
    if hasattr(pool, "drain"):  # psycopg_pool 3.3+
        operations["drain"] = pool.drain
    return operations


def test_every_operation_on_another_loop_is_stopped_and_the_pool_still_works_on_its_own(
    dsn: str, pools: list[AsyncConnectionPool]
) -> None:
    """A pool of a loop that is still open (a wider-scoped fixture's): each of its methods
    called on another loop is stopped before anything happens, named in the record, with the
    idle-loop cause; back on its own loop, the pool serves as before and closes cleanly."""
    loop_a = asyncio.new_event_loop()
    try:
        pool = loop_a.run_until_complete(_open_pool(dsn))
        pools.append(pool)
        held = [loop_a.run_until_complete(pool.getconn())]  # for putconn on loop B
        stats = pool.get_stats()
        for name, make in _operations(pool, held).items():
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(make())
            assert excinfo.value.record["operation"] == f"AsyncConnectionPool.{name}"
            assert excinfo.value.record["cause"] == "idle-loop-test"
            assert excinfo.value.owner_loop_closed is False
        assert not pool.closed
        assert (pool.min_size, pool.max_size) == (1, 2)  # resize() did not happen
        assert {k: pool.get_stats()[k] for k in ("pool_size", "pool_available")} == {
            k: stats[k] for k in ("pool_size", "pool_available")
        }
        loop_a.run_until_complete(pool.putconn(held[0]))
        assert loop_a.run_until_complete(_two_at_once(pool)) == 2
        loop_a.run_until_complete(pool.close())
    finally:
        loop_a.close()


def test_a_pool_of_a_loop_running_in_another_thread(
    dsn: str, pools: list[AsyncConnectionPool]
) -> None:
    """Owner loop running in another thread: cause running-loop; the owner keeps using it."""
    with loop_in_thread() as loop_a:

        def on_a(coro: Awaitable[T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop_a).result(10)  # type: ignore[arg-type]

        pool = on_a(_open_pool(dsn))
        pools.append(pool)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_select(pool))
        assert excinfo.value.record["cause"] == "running-loop"
        assert "another thread" in str(excinfo.value)
        assert on_a(_select(pool, 3)) == 3
        on_a(pool.close())


def test_a_null_pool_is_bound_to_its_loop_too(dsn: str, pools: list[AsyncConnectionPool]) -> None:
    """AsyncNullConnectionPool keeps no connection, but its lock, queue and workers are the
    loop's that opened it, like any AsyncConnectionPool's."""

    async def open_null() -> AsyncNullConnectionPool:
        pool: AsyncNullConnectionPool = AsyncNullConnectionPool(dsn, max_size=2, open=False)
        await pool.open()
        await _select(pool)
        return pool

    pool, _ = on_new_loop(open_null)
    pools.append(pool)
    for make in (lambda: _select(pool), lambda: pool.resize(0, 3), pool.wait):
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(make())
        assert excinfo.value.pool_class == "AsyncNullConnectionPool"
    assert excinfo.value.record["operation"] == "AsyncNullConnectionPool.wait"


# -- warn mode: reported, then psycopg_pool as without loopguard ----------------------------------


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_warns_once_per_loop_and_lets_psycopg_pool_behave_as_it_would(
    dsn: str, pools: list[AsyncConnectionPool], mode: str, log_file: Path
) -> None:
    """warn mode: one LoopMismatchWarning per pool and loop, at the user's line, and a
    warning-level record; the call goes ahead unchanged (nothing can be healed: the pool's
    tasks cannot move), so it works while the pool has an idle connection and times out
    when it must open one, exactly as without loopguard."""
    pool, _ = on_new_loop(lambda: _open_pool(dsn, timeout=1.0))
    pools.append(pool)

    async def on_loop_b() -> list[int]:
        return [await _select(pool, number) for number in (1, 2, 3)]

    with written(log_file) as out:
        assert asyncio.run(on_loop_b()) == [1, 2, 3]
        with pytest.raises(PoolTimeout):
            asyncio.run(_two_at_once(pool))
    assert out.codes() == ["LG112", "LG112"]
    first, second = out.warnings
    assert (first.filename, first.lineno) == (__file__, CONNECTION_LINE)
    assert (second.filename, second.lineno) == (__file__, TWO_LINE)
    message = str(first.message)
    assert message.splitlines()[0].endswith(
        "loopguard cannot move a pool to another loop (its worker tasks run on loop "
        f"#{out.events[0]['owner_loop_id']}), so the call goes ahead, as without loopguard: it "
        "may hang until PoolTimeout."
    )
    assert [entry["log_level"] for entry in out.events] == ["warning", "warning"]
    assert [entry["action"] for entry in out.events] == ["warned", "warned"]


# -- correct code is left alone -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_pool_per_loop_closed_on_it_is_silent(dsn: str, mode: str, log_file: Path) -> None:
    """The documented fix: each asyncio.run() opens its own pool and closes it (``async
    with``), a null pool too; nothing is reported."""

    async def job(number: int) -> int:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
            assert await _two_at_once(pool) == 2
            async with AsyncNullConnectionPool(dsn, max_size=1, open=False) as null:
                assert await _select(null, number) == number
            return await _select(pool, number)

    with silence_checked(log_file):
        assert [asyncio.run(job(number)) for number in (1, 2, 3)] == [1, 2, 3]


@pytest.mark.parametrize("mode", MODES)
def test_one_pool_for_the_whole_run_on_one_loop_is_silent(
    dsn: str, mode: str, log_file: Path
) -> None:
    """One pool on one loop, used by many tasks at once and through every method."""

    async def everything() -> None:
        pool = await _open_pool(dsn)
        assert sorted(await asyncio.gather(*(_select(pool, n) for n in range(10)))) == list(
            range(10)
        )
        assert await _two_at_once(pool) == 2
        conn = await pool.getconn()
        await pool.putconn(conn)
        await pool.resize(1, 3)
        await pool.check()
        if hasattr(pool, "drain"):
            await pool.drain()
        await pool.wait()
        async with pool:  # open() again on an open pool: a no-op
            assert await _select(pool, 7) == 7

    with silence_checked(log_file):
        asyncio.run(everything())


@pytest.mark.parametrize("mode", MODES)
def test_a_closed_pool_used_elsewhere_gets_psycopg_pools_own_error(
    dsn: str, mode: str, log_file: Path
) -> None:
    """A closed pool belongs to no loop: using it anywhere is psycopg_pool's PoolClosed."""

    async def open_and_close() -> AsyncConnectionPool:
        pool = await _open_pool(dsn)
        await pool.close()
        return pool

    pool, _ = on_new_loop(open_and_close)
    with silence_checked(log_file):
        with pytest.raises(psycopg_pool.PoolClosed):
            asyncio.run(_select(pool))
        asyncio.run(pool.close())  # closing it again is a no-op, on any loop


# -- creation sites, pools from before install() --------------------------------------------------


class TenantPool(AsyncConnectionPool):
    """An application's own pool class, setting its own defaults."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, min_size=1, max_size=2, open=False, name="tenants")


def test_a_subclass_pool_is_created_at_the_users_line(
    dsn: str, pools: list[AsyncConnectionPool]
) -> None:
    async def make() -> TenantPool:
        pool = TenantPool(dsn)  # tenant-pool
        await pool.open(wait=True)
        return pool

    pool, _ = on_new_loop(make)
    pools.append(pool)
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_select(pool))
    err = excinfo.value
    assert err.created_at == f"{THIS_FILE}:{marker_line(__file__, 'tenant-pool')}"
    assert err.pool_class == "TenantPool"
    assert err.record["operation"] == "TenantPool.connection"
    assert "(TenantPool 'tenants')" in str(err)


def test_a_pool_opened_before_install_is_bound_to_its_tasks_loop(
    dsn: str, pools: list[AsyncConnectionPool]
) -> None:
    """A pool opened while loopguard was not installed belongs to the loop its tasks run on:
    stopped on any other, its creation site and opening unknown (the message says so)."""
    loopguard.uninstall()
    pool, loop_a = on_new_loop(lambda: _open_pool(dsn))
    pools.append(pool)
    loopguard.install("raise")
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_select(pool))
    err = excinfo.value
    assert err.created_at is None and err.bound_at is None
    assert err.owner_loop_id == loop_id(loop_a)
    message = str(err)
    assert (
        "  created at:    unknown: the pool was created before loopguard was installed "
        "(install it earlier: LOOPGUARD=1 or the pytest plugin)"
    ) in message
    assert (
        f"  bound:         opened before loopguard was installed, on loop #{loop_id(loop_a)}, "
        "which is now closed"
    ) in message


def test_a_pool_opened_before_install_on_the_running_loop_is_silent(
    dsn: str, log_file: Path
) -> None:
    async def job() -> None:
        loopguard.uninstall()
        pool = await _open_pool(dsn)
        loopguard.install("raise", log_file=str(log_file))
        assert await _two_at_once(pool) == 2
        await pool.close()

    with silence_checked(log_file):
        asyncio.run(job())


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["uri", "conninfo", "kwargs"])
def test_no_password_in_any_sink(
    dsn: str, pools: list[AsyncConnectionPool], log_file: Path, given: str
) -> None:
    """The pool's password, in a URI, a key=value conninfo or its kwargs, is in no message,
    record, attribute, pickle or log line (the server trusts local connections)."""
    from urllib.parse import parse_qs, quote, urlsplit

    parts = urlsplit(dsn)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    kwargs: dict[str, Any] = {}
    if given == "uri":
        conninfo = dsn.replace("postgres@", f"postgres:{quote(SECRET, safe='')}@")
    elif given == "conninfo":
        escaped = SECRET.replace("\\", "\\\\").replace("'", "\\'")
        conninfo = f"host={query['host']} port={query['port']} user=postgres password='{escaped}'"
    else:
        conninfo = ""
        kwargs = {"host": query["host"], "port": query["port"], "user": "postgres"}
        kwargs["password"] = SECRET
    pool, _ = on_new_loop(lambda: _open_pool(conninfo, kwargs=kwargs or None))
    pools.append(pool)
    with written(log_file) as out, pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_select(pool))
    assert "***" in str(excinfo.value) or given == "kwargs"
    assert_no_secret([*error_texts(excinfo.value), *out.texts()])
    if given == "kwargs":
        assert excinfo.value.url == f"host={query['host']} port={query['port']} user=postgres"


# -- the patch table, off, and memory -------------------------------------------------------------

_GUARDED_CLASSES = (AsyncConnectionPool, AsyncNullConnectionPool)


def test_uninstall_restores_every_psycopg_pool_attribute_exactly() -> None:
    """install() changes exactly the documented attributes; uninstall() puts back the very
    objects that were there (an inherited attribute goes back to being inherited)."""

    def close_stays_a_coroutine_function() -> None:
        assert asyncio.iscoroutinefunction(AsyncConnectionPool.close)

    changed = install_round_trip(_GUARDED_CLASSES, close_stays_a_coroutine_function)
    expected = [
        "AsyncConnectionPool.__init__",
        "AsyncConnectionPool._check_open_getconn",
        "AsyncConnectionPool._check_pool_putconn",
        "AsyncConnectionPool._open",
        "AsyncConnectionPool.check",
        "AsyncConnectionPool.close",
        "AsyncConnectionPool.open",
        "AsyncConnectionPool.resize",
        "AsyncNullConnectionPool.resize",
    ]
    if hasattr(AsyncConnectionPool, "drain"):
        expected.append("AsyncConnectionPool.drain")
    assert changed == sorted(expected)


_DEFERRED_IMPORT = """
import sys
import loopguard
loopguard.install("raise")
assert "psycopg_pool" not in sys.modules, "install() imported psycopg_pool"
print("guarding:", loopguard._state.STATE.enabled)
import psycopg_pool
wrapped = getattr(psycopg_pool.AsyncConnectionPool.__dict__["_open"], "__loopguard_wrapped__", 0)
print("patched on import:", bool(wrapped))
loopguard.uninstall()
print("restored:", not hasattr(psycopg_pool.AsyncConnectionPool._open, "__loopguard_wrapped__"))
"""


def test_install_does_not_import_psycopg_pool_and_patches_it_on_its_import() -> None:
    """loopguard never imports psycopg_pool itself: its patches go on at the library's first
    import, and off (uninstalled) means nothing of it is patched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _DEFERRED_IMPORT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("guarding: [") and "'psycopg_pool'" in lines[0]
    assert lines[1:] == ["patched on import: True", "restored: True"]


def test_pools_are_held_weakly_and_forgotten_on_close(dsn: str) -> None:
    """No entry outlives its pool; a closed pool (which cannot be reopened) is forgotten at
    once."""
    before = len(_psycopg_pool.POOLS)

    async def make_many() -> list[AsyncConnectionPool]:
        made = [AsyncConnectionPool(dsn, min_size=1, open=False) for _ in range(50)]
        closed = await _open_pool(dsn)
        await closed.close()
        assert id(closed) not in _psycopg_pool.POOLS.ids()
        return made

    made = asyncio.run(make_many())
    assert len(_psycopg_pool.POOLS) == before + 50
    del made
    gc.collect()
    assert len(_psycopg_pool.POOLS) == before


# -- through the pytest plugin --------------------------------------------------------------------

APP_DB = """
import os

from psycopg_pool import AsyncConnectionPool

pool = AsyncConnectionPool(os.environ["APP_DSN"], min_size=1, max_size=2, timeout=2, open=False)


async def get_pool():
    if pool.closed:
        await pool.open(wait=True)
    return pool
"""

APP_TESTS = """
from app.db import get_pool


async def test_one():
    pool = await get_pool()
    async with pool.connection() as conn:
        await conn.execute("select 1")


async def test_two():
    pool = await get_pool()
    async with pool.connection() as conn, pool.connection() as audit:
        await conn.execute("select 2")
        await audit.execute("select 'audit'")
"""

FIXTURE_TESTS = """
import os

import pytest_asyncio
from psycopg_pool import AsyncConnectionPool


@pytest_asyncio.fixture
async def pool():
    dsn = os.environ["APP_DSN"]
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        yield pool


async def test_one(pool):
    async with pool.connection() as conn:
        await conn.execute("select 1")


async def test_two(pool):
    async with pool.connection() as conn, pool.connection() as audit:
        await conn.execute("select 2")
        await audit.execute("select 'audit'")
"""


def _app_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    monkeypatch.setenv("APP_DSN", dsn)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    for name in ("LOOPGUARD", "LOOPGUARD_LOG_FILE", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    lines = ["[pytest]", "asyncio_mode = auto", "pythonpath = ."]
    if PYTEST_ASYNCIO >= (0, 24):  # older lines do not know the option (and warn about it)
        lines.append("asyncio_default_fixture_loop_scope = function")
    pytester.makeini("\n".join(lines) + "\n")
    (pytester.path / "app").mkdir()
    (pytester.path / "app" / "__init__.py").write_text("")
    (pytester.path / "app" / "db.py").write_text(APP_DB.lstrip("\n"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_app.py").write_text(APP_TESTS.lstrip("\n"))
    (pytester.path / "tests" / "test_fixture.py").write_text(FIXTURE_TESTS.lstrip("\n"))


# How test_two fails without loopguard: the hang, then PoolTimeout; psycopg_pool before 3.2
# may fail first on the dead loop itself, with asyncio's "Event loop is closed".
RAW_FAILURE = re.compile(
    r"^FAILED tests/test_app.py::test_two - (?:psycopg_pool\.PoolTimeout|RuntimeError: Event loop "
    r"is closed)",
    re.M,
)


def _line_of(source: str, text: str) -> int:
    return 1 + next(n for n, line in enumerate(source.lstrip("\n").splitlines()) if text in line)


@pytest.mark.parametrize("plugin_mode", ["off", "raise", "warn"])
def test_pytest_suite_with_a_module_level_pool(
    pytester: pytest.Pytester, pg_env: str, monkeypatch: pytest.MonkeyPatch, plugin_mode: str
) -> None:
    """A module-level pool opened by the first test, on pytest-asyncio's loop for that test:
    unguarded, the next test that needs a new connection hangs for the pool's timeout and
    fails with PoolTimeout (RAW_FAILURE); --loopguard fails it at once with LoopMismatchError naming
    app/db.py and test_one, and summarises it; warn mode warns at test_two's line and
    PoolTimeout follows.  The fix (an async fixture per test) passes, silently."""
    _app_suite(pytester, monkeypatch, pg_env)
    args = [] if plugin_mode == "off" else [f"--loopguard-mode={plugin_mode}"]
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--tb=short", *args, timeout=120
    )
    result.assert_outcomes(passed=3, failed=1)
    create = _line_of(APP_DB, "AsyncConnectionPool(")
    opened = _line_of(APP_DB, "await pool.open")
    use = _line_of(APP_TESTS, "pool.connection() as conn, pool.connection() as audit")
    text = result.stdout.str()
    assert "test_fixture.py::test" not in text.split("short test summary info")[-1]
    # The fix is silent: no warning, record or traceback points into tests/test_fixture.py.
    assert "tests/test_fixture.py:" not in text
    if plugin_mode == "off":
        assert "LoopMismatch" not in text
        assert RAW_FAILURE.search(text), text
    elif plugin_mode == "raise":
        result.stdout.fnmatch_lines(
            [
                "*test_two*",
                "E   loopguard.LoopMismatchError: psycopg_pool AsyncConnectionPool used on "
                "event loop #*, but it belongs to loop #*, the loop that opened it; stopped "
                "before any I/O.",
                "E     pool:          postgresql://* (AsyncConnectionPool 'pool-*')",
                f"E     created at:    app/db.py:{create} in <module> (outside any test, no event "
                "loop running)",
                "E     bound:         opened during tests/test_app.py::test_one (call), at "
                f"app/db.py:{opened} in get_pool, on loop #*, which is now closed",
                "E     used now:      during tests/test_app.py::test_two (call) on loop #*, at "
                f"tests/test_app.py:{use} in test_two (AsyncConnectionPool.connection)",
                "*= loopguard =*",
                f"  LG112 app/db.py:{create} in <module>  *",
            ]
        )
        assert "psycopg_pool.PoolTimeout:" not in text
    else:
        result.stdout.fnmatch_lines(
            [
                "*warnings summary*",
                f"*tests/test_app.py:{use}: LoopMismatchWarning: psycopg_pool "
                "AsyncConnectionPool used on event loop #*",
            ]
        )
        assert RAW_FAILURE.search(text), text
