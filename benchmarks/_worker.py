"""One arm of one interleaved timing, driven by ``run.py`` through stdin/stdout.

    python benchmarks/_worker.py ARM BENCH N DSN

ARM is ``off`` (loopguard never imported: SQLAlchemy and asyncpg exactly as shipped),
``raise`` (``loopguard.install("raise")`` before anything is created) or ``debug``
(started with ``PYTHONASYNCIODEBUG=1`` by run.py).  The worker builds its engine or pool on
one event loop, warms it up, answers ``ready``; then each ``sample`` line times N operations
and answers with the seconds per operation, wall-clock and this process's CPU time (user +
system: the client's own work, without the waits for the server or for a CPU that another
process holds); ``run`` does N operations untimed with the garbage collector paused (for
instruction counts under valgrind); ``quit`` tears down and exits.  Each arm runs in
its own process, so "off" is a process loopguard never touched.

Two processes differ by more than the code they run.  Where objects land in memory moves
these timings by several percent from process to process: the off arm, with no loopguard
at all, measured SELECT 1 ~7% slower when SQLAlchemy was imported at the top of the worker
instead of after the rest of it, for 0.6% more instructions (benchmarks/RESULTS.md).  So:

- every arm imports SQLAlchemy and asyncpg in the same order, before ``loopguard.install()``
  (which would otherwise import them first in the raise arm only);
- ``LOOPGUARD_BENCH_LAYOUT`` (``SEED:`` plus a seed-dependent run of padding, which also
  moves the stack) makes the worker allocate a seed-dependent amount of memory in every
  size class before anything else; run.py gives the arms of a round the same seed and every
  round a new one, so that the rounds sample many layouts instead of one per arm.
"""

from __future__ import annotations

import os
import random
import sys
from typing import List


def pad_heap(layout: str) -> List[object]:
    """Live allocations that shift where everything allocated after them lands."""
    if not layout:
        return []
    rng = random.Random(int(layout.split(":", 1)[0]))
    small = [bytes(rng.randrange(1, 512)) for _ in range(rng.randrange(4000))]
    return [*small, bytearray(rng.randrange(1 << 20))]


# Before the other imports: their modules' objects are allocated after the padding.
_HEAP_PADDING = pad_heap(os.environ.get("LOOPGUARD_BENCH_LAYOUT", ""))

import asyncio  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, Tuple  # noqa: E402

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)

from _patch_tables import changed_since, class_dicts  # noqa: E402
from pgserver import sqlalchemy_url  # noqa: E402

Bench = Tuple[
    Callable[[], Any], Callable[[Any, int], Any], Callable[[Any], Any], Callable[[Any], bool]
]


def now() -> Tuple[int, int]:
    return time.perf_counter_ns(), time.process_time_ns()


def since(start: Tuple[int, int]) -> Tuple[int, int]:
    """(wall ns, CPU ns) since ``start``."""
    return time.perf_counter_ns() - start[0], time.process_time_ns() - start[1]


def sqlalchemy_tracked(engine: Any) -> bool:
    """The raise arm's pool is tracked and bound, so the full checkout check runs."""
    from loopguard.integrations import _sqlalchemy

    pool = engine.sync_engine.pool
    registry = getattr(_sqlalchemy, "POOLS", None)  # before the core: a WeakKeyDictionary
    state = registry.get(pool) if registry is not None else _sqlalchemy._pools.get(pool)
    return state is not None and state.binding is not None


def held_tracked(resource: Any) -> bool:
    """The raise arm's held connection is known to loopguard, so each statement is checked."""
    from loopguard.integrations import _sqlalchemy

    conn = resource[1]
    record = conn.sync_connection.connection._connection_record
    registry = getattr(_sqlalchemy, "CONNECTIONS", None)
    return registry is not None and registry.get(record) is not None


def asyncpg_guarded(_: Any) -> bool:
    from loopguard._state import STATE

    return "asyncpg" in STATE.enabled


def benches(url: str, dsn: str) -> Dict[str, Bench]:
    import asyncpg
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.util import greenlet_spawn

    async def make_engine() -> Any:
        return create_async_engine(url, pool_size=5)

    async def dispose(engine: Any) -> None:
        await engine.dispose()

    async def pool_checkouts(engine: Any, n: int) -> Tuple[int, int]:
        pool = engine.sync_engine.pool

        def work() -> Tuple[int, int]:
            t0 = now()
            for _ in range(n):
                pool.connect().close()
            return since(t0)

        return await greenlet_spawn(work)

    async def engine_connects(engine: Any, n: int) -> Tuple[int, int]:
        t0 = now()
        for _ in range(n):
            async with engine.connect():
                pass
        return since(t0)

    async def make_sessions() -> Any:
        engine = create_async_engine(url, pool_size=5)
        return engine, async_sessionmaker(engine), text("select 1")

    async def dispose_sessions(resource: Any) -> None:
        await resource[0].dispose()

    async def session_select(resource: Any, n: int) -> Tuple[int, int]:
        _, session_factory, select_1 = resource
        t0 = now()
        for _ in range(n):
            async with session_factory() as session:
                await session.execute(select_1)
        return since(t0)

    def make_held(driver: str) -> Any:
        async def make() -> Any:
            engine = create_async_engine(url.replace("+asyncpg", f"+{driver}"), pool_size=5)
            conn = await engine.connect()
            return engine, conn, text("select 1")

        return make

    async def close_held(resource: Any) -> None:
        await resource[1].close()
        await resource[0].dispose()

    async def held_statements(resource: Any, n: int) -> Tuple[int, int]:
        _, conn, select_1 = resource
        t0 = now()
        for _ in range(n):
            await conn.execute(select_1)
        return since(t0)

    async def make_pool() -> Any:
        return await asyncpg.create_pool(dsn, min_size=1, max_size=5)

    async def close_pool(pool: Any) -> None:
        await pool.close()

    async def acquires(pool: Any, n: int) -> Tuple[int, int]:
        t0 = now()
        for _ in range(n):
            async with pool.acquire():
                pass
        return since(t0)

    async def acquire_fetchval(pool: Any, n: int) -> Tuple[int, int]:
        t0 = now()
        for _ in range(n):
            async with pool.acquire() as conn:
                await conn.fetchval("select 1")
        return since(t0)

    return {
        "1a": (make_engine, pool_checkouts, dispose, sqlalchemy_tracked),
        "1b": (make_engine, engine_connects, dispose, sqlalchemy_tracked),
        "2": (make_sessions, session_select, dispose_sessions, lambda r: sqlalchemy_tracked(r[0])),
        "2b": (make_held("asyncpg"), held_statements, close_held, held_tracked),
        "2c": (make_held("psycopg"), held_statements, close_held, held_tracked),
        "3a": (make_pool, acquires, close_pool, asyncpg_guarded),
        "3b": (make_pool, acquire_fetchval, close_pool, asyncpg_guarded),
    }


WRAPPED_MARK = "__loopguard_wrapped__"  # loopguard._patching.WRAPPED_MARK, without importing it


def patched_attributes() -> List[str]:
    """Every class attribute, in every loaded module, that carries loopguard's wrapper mark."""
    found = []
    seen = set()
    for module in list(sys.modules.values()):
        for obj in list(getattr(module, "__dict__", {}).values()):
            if not isinstance(obj, type) or id(obj) in seen:
                continue
            seen.add(id(obj))
            for attr, value in list(vars(obj).items()):
                try:
                    marked = getattr(value, WRAPPED_MARK, False) is True
                except Exception:  # noqa: BLE001 - exotic descriptors: not ours
                    marked = False
                if marked:
                    found.append(f"{obj.__module__}.{obj.__qualname__}.{attr}")
    return sorted(found)


def check_off() -> None:
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import QueuePool

    assert "loopguard" not in sys.modules, "off arm: loopguard was imported"
    for owner, name in ((QueuePool, "_do_get"), (QueuePool, "dispose"), (AsyncEngine, "__init__")):
        function = owner.__dict__[name]
        assert function.__module__.startswith("sqlalchemy."), f"{owner.__name__}.{name} replaced"
    assert not patched_attributes(), f"off arm: patched {patched_attributes()}"


def main() -> int:
    arm, key, n_text, dsn = sys.argv[1:5]
    n = int(n_text)
    # The protocol owns the real stdout; anything else printed goes to stderr.
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr

    def reply(text: str) -> None:
        channel.write(text + "\n")
        channel.flush()

    # The libraries first, in every arm (install() would import them first in one arm only).
    table = benches(sqlalchemy_url(dsn), dsn)
    # Every arm takes it (the same allocations, the same memory layout); off checks it at the end.
    before = class_dicts()
    if arm == "raise":
        import loopguard

        loopguard.install("raise")
    else:
        check_off()
    debug_env = bool(os.environ.get("PYTHONASYNCIODEBUG"))
    assert debug_env == (arm == "debug"), f"arm {arm} with PYTHONASYNCIODEBUG={debug_env}"
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # "Executing <Task> took 0.1 s"
    loop = asyncio.new_event_loop()  # debug mode comes from PYTHONASYNCIODEBUG, as for users
    assert loop.get_debug() == (arm == "debug")
    setup, op, teardown, guarded = table[key]
    resource = loop.run_until_complete(setup())
    try:
        loop.run_until_complete(op(resource, max(10, n // 4)))  # warm-up: connects, caches
        # Everything alive now (the libraries, the engine or pool) out of the collector's
        # sight: a collection that falls between two ``run`` commands of one process and
        # not the other would otherwise scan all of it and count as millions of
        # instructions of "work" (about 2 M, on 1a's raise arm).
        gc.collect()
        gc.freeze()
        reply(f"ready {guarded(resource) if arm == 'raise' else '-'}")
        for line in sys.stdin:
            command = line.strip()
            if command == "sample":
                gc.collect()
                wall, cpu = loop.run_until_complete(op(resource, n))
                reply(f"{wall / n / 1e9!r} {cpu / n / 1e9!r}")
            elif command == "run":
                # For instruction counts (run.py's "instructions" section): N operations
                # with the collector paused, so a collection that falls on one side of the
                # difference between two processes does not count as the operations' work.
                gc.disable()
                loop.run_until_complete(op(resource, n))
                gc.enable()
                reply("ok")
            elif command == "quit":
                break
            else:
                reply(f"error unknown command {command!r}")
                return 2
        if arm == "off":
            check_off()
            # Last, since it imports loopguard.integrations: the integrations' own tables.
            changed = changed_since(before)
            assert not changed, f"off arm: patch points changed: {changed}"
    finally:
        loop.run_until_complete(teardown(resource))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    reply("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
