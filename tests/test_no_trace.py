"""No trace the application can observe: the same application, run once without loopguard and
once with it installed, against the real PostgreSQL, sees exactly the same things.

What the application can observe, as compared here:

- the ``info`` dicts SQLAlchemy hands it (``AsyncConnection.info``, the sync ``Connection.info``,
  the pooled connection's ``info`` and ``record_info`` from ``get_raw_connection()``, and the
  connection record's ``info`` in a pool event): exactly what the application put there;
- ``pool.status()``, and ``repr()`` of the engine, ``AsyncEngine``, pool and connections (with
  memory addresses masked);
- the event listeners registered on the engine and the pool, event by event (by qualified name:
  the functions of two engines are different objects), and ``sqlalchemy.event.contains()`` for
  the application's own listener;
- ``warnings.filters``: unchanged by ``install()``/``uninstall()`` and by a mismatch reported
  in warn mode;
- attributes.  A *public attribute* is a name without a leading underscore in ``dir()`` of an
  object the application holds (engine, ``AsyncEngine``, pool, ``AsyncConnection``, sync
  ``Connection``, the pooled connection, the asyncpg ``Connection``; the asyncpg ``Pool``, its
  acquired connection).  Objects that have a ``__dict__`` (engine, pool, sync ``Connection``,
  the pooled connection and its record) are compared by every name in ``vars()``, private ones
  included: ``copy.copy()``, pickling and ``vars()`` see those too.  Class attributes that
  loopguard wraps while installed (listed in docs/how-it-works.md) are not part of this: they
  are how it works.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Iterator
from typing import Any, Callable

import asyncpg
import pytest
from guard_helpers import on_new_loop
from pgserver import sqlalchemy_url
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

import loopguard

Snapshot = dict[str, Any]


@pytest.fixture(autouse=True)
def _not_installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test installs loopguard itself, half-way; it is never left installed."""
    monkeypatch.delenv("LOOPGUARD", raising=False)
    monkeypatch.delenv("LOOPGUARD_LOG_FILE", raising=False)
    assert not loopguard.is_installed()
    yield
    if loopguard.is_installed():
        loopguard.uninstall()


def _masked(value: object) -> str:
    return re.sub(r"0x[0-9a-fA-F]+", "0x...", repr(value))


def _public(obj: object) -> list[str]:
    return sorted(name for name in dir(obj) if not name.startswith("_"))


def _listeners(target: Any) -> dict[str, list[str]]:
    """The listeners of every event of ``target`` (class-level ones included), by name."""
    dispatch = target.dispatch
    found = {}
    for name in dispatch._event_names:
        functions = list(getattr(dispatch, name))
        if functions:
            found[name] = [f"{fn.__module__}.{fn.__qualname__}" for fn in functions]
    return found


def _compare(observe: Callable[[], Snapshot], mode: str = "raise") -> None:
    """Observe once without loopguard, once with it installed; the snapshots are equal."""
    without = observe()
    loopguard.install(mode)
    try:
        with_loopguard = observe()
    finally:
        loopguard.uninstall()
    assert with_loopguard.keys() == without.keys()
    differences = {
        key: {"without": without[key], "with loopguard": with_loopguard[key]}
        for key in without
        if with_loopguard[key] != without[key]
    }
    assert differences == {}, f"differs with loopguard: {sorted(differences)}"


# -- SQLAlchemy ---------------------------------------------------------------------------------


def _sqlalchemy_app(url: str) -> Snapshot:
    """An application's engine: info it keeps on its connections, a pool event, a dispose."""
    seen: Snapshot = {}
    # LIFO: the next checkout gets the connection given back last, the one with the info.
    engine = create_async_engine(url, pool_size=2, pool_use_lifo=True)
    pool = engine.sync_engine.pool

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        seen.setdefault("record.info at checkout", []).append(dict(record.info))

    event.listen(pool, "checkout", on_checkout)

    async def work() -> None:
        async with engine.connect() as conn:
            conn.info["tenant"] = "acme"
            await conn.execute(text("select 1"))
            raw = await conn.get_raw_connection()
            assert raw.record_info is not None and conn.sync_connection is not None
            raw.record_info["slot"] = 1  # lives as long as the pool's record, not the connection
            record = raw._connection_record
            seen["AsyncConnection.info"] = dict(conn.info)
            seen["Connection.info"] = dict(conn.sync_connection.info)
            seen["raw.info"] = dict(raw.info)
            seen["raw.record_info"] = dict(raw.record_info)
            seen["dir(AsyncEngine)"] = _public(engine)
            seen["dir(AsyncConnection)"] = _public(conn)
            seen["dir(Connection)"] = _public(conn.sync_connection)
            seen["dir(raw)"] = _public(raw)
            seen["dir(driver connection)"] = _public(raw.driver_connection)
            seen["vars(Connection)"] = sorted(vars(conn.sync_connection))
            seen["vars(raw)"] = sorted(vars(raw))
            seen["vars(record)"] = sorted(vars(record))
            seen["repr(AsyncConnection)"] = _masked(conn)
            seen["repr(raw)"] = _masked(raw)
            seen["status, checked out"] = pool.status()
            async with engine.connect() as other:  # a second connection; its info is not used
                await other.execute(text("select 1"))
                other_raw = await other.get_raw_connection()
                seen["vars(record), info unused"] = sorted(vars(other_raw._connection_record))
                seen["vars(raw), info unused"] = sorted(vars(other_raw))
                seen["status, two checked out"] = pool.status()
        seen["status, checked in"] = pool.status()
        async with engine.connect() as conn:  # the same pooled connection again
            raw = await conn.get_raw_connection()
            assert raw.record_info is not None
            seen["AsyncConnection.info, next checkout"] = dict(conn.info)
            seen["raw.record_info, next checkout"] = dict(raw.record_info)
            seen["vars(record), next checkout"] = sorted(vars(raw._connection_record))
        seen["dir(engine)"] = _public(engine.sync_engine)
        seen["dir(pool)"] = _public(pool)
        seen["vars(engine)"] = sorted(vars(engine.sync_engine))
        seen["vars(pool)"] = sorted(vars(pool))
        seen["repr(engine)"] = _masked(engine.sync_engine)
        seen["repr(AsyncEngine)"] = _masked(engine)
        seen["repr(pool)"] = _masked(pool)
        seen["listeners(engine)"] = _listeners(engine.sync_engine)
        seen["listeners(pool)"] = _listeners(pool)
        seen["contains(pool, checkout)"] = event.contains(pool, "checkout", on_checkout)
        await engine.dispose()
        new_pool = engine.sync_engine.pool
        seen["status, disposed"] = new_pool.status()
        seen["vars(pool), disposed"] = sorted(vars(new_pool))
        seen["listeners(engine), disposed"] = _listeners(engine.sync_engine)
        seen["listeners(pool), disposed"] = _listeners(new_pool)

    asyncio.run(work())
    return seen


def test_sqlalchemy_application_sees_the_same_with_loopguard(pg_dsn: str) -> None:
    """Info dicts hold exactly what the application put there; status, reprs, listeners and
    attributes of the engine, pool and connections are the same as without loopguard."""
    url = sqlalchemy_url(pg_dsn)
    without = _sqlalchemy_app(url)
    # What the application put there, and nothing else (checked on the run without loopguard
    # too: the comparison below is only as good as this baseline).
    assert without["AsyncConnection.info"] == {"tenant": "acme"}
    assert without["raw.info"] == {"tenant": "acme"}
    assert without["raw.record_info"] == {"slot": 1}
    assert without["AsyncConnection.info, next checkout"] == {"tenant": "acme"}
    assert without["raw.record_info, next checkout"] == {"slot": 1}
    assert without["record.info at checkout"] == [{}, {}, {"tenant": "acme"}]
    _compare(lambda: _sqlalchemy_app(url))


# -- raw asyncpg --------------------------------------------------------------------------------


def _asyncpg_app(dsn: str) -> Snapshot:
    seen: Snapshot = {}

    async def work() -> None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        async with pool.acquire() as conn:
            await conn.fetchval("select 1")
            seen["dir(Pool)"] = _public(pool)
            seen["dir(acquired)"] = _public(conn)
            seen["repr(acquired)"] = _masked(conn)
        await pool.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.fetchval("select 1")
            seen["dir(Connection)"] = _public(conn)
            seen["repr(Connection)"] = _masked(conn)
        finally:
            await conn.close()

    asyncio.run(work())
    return seen


def test_asyncpg_application_sees_the_same_with_loopguard(pg_dsn: str) -> None:
    """Public attributes and reprs of asyncpg pools and connections are unchanged."""
    _compare(lambda: _asyncpg_app(pg_dsn))


# -- warning filters ----------------------------------------------------------------------------


def test_install_and_uninstall_leave_the_warning_filters_alone() -> None:
    before = list(warnings.filters)
    loopguard.install()
    assert warnings.filters == before
    loopguard.install("warn")
    assert warnings.filters == before
    loopguard.uninstall()
    assert warnings.filters == before


def test_a_mismatch_in_warn_mode_leaves_the_warning_filters_alone(pg_dsn: str) -> None:
    """The LoopMismatchWarning is emitted through the filters as they are, and changes none."""
    engine = create_async_engine(sqlalchemy_url(pg_dsn))

    async def job() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))

    loopguard.install("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        on_new_loop(job)
        on_new_loop(job)  # a second loop: the mismatch, healed with a warning
        assert warnings.filters == before
    assert [w.category for w in caught] == [loopguard.LoopMismatchWarning]

    async def dispose() -> None:
        await engine.dispose()

    asyncio.run(dispose())
