"""Reading and emptying a SQLAlchemy pool's queue without I/O on the loop its connections use.

Used when a pool is healed (``warn`` mode), disposed on a foreign loop (LG104) or found with
connections when their loop closes (LG106).  SQLAlchemy's ``AsyncAdaptedQueue`` creates its
``asyncio.Queue`` lazily (memoized in ``__dict__``); a thread-safe ``Queue`` keeps its items
in ``.queue``.

The pools without a queue keep their connections each in its own way: ``StaticPool`` one
record, memoized in ``__dict__["connection"]``; ``SingletonThreadPool`` one per thread, all in
``_all_conns``; ``AssertionPool`` one, in ``_conn``, with ``_checked_out`` telling whether it is
out.  ``idle_records`` and ``checked_out_count`` read them all alike.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .. import _release
from .._log import app_log


def asyncio_queue(pool: Any) -> Any:
    """The pool's asyncio.Queue if it has been created, else None."""
    return getattr(pool._pool, "__dict__", {}).get("_queue")


def is_queued(pool: Any) -> bool:
    """A QueuePool (or subclass): connections wait in a queue, checkouts are counted."""
    return hasattr(pool, "_pool") and hasattr(pool, "checkedout")


def idle_records(pool: Any) -> list[Any]:
    """The connection records a pool keeps and has not handed out, without taking them out."""
    if is_queued(pool):
        return queued_records(pool)
    static = pool.__dict__.get("connection")  # StaticPool: one record, memoized
    if static is not None:
        return [static] if static.fairy_ref is None else []
    all_conns = getattr(pool, "_all_conns", None)  # SingletonThreadPool: one per thread
    if all_conns is not None:
        return [record for record in list(all_conns) if record.fairy_ref is None]
    record = getattr(pool, "_conn", None)  # AssertionPool
    return [record] if record is not None and not getattr(pool, "_checked_out", False) else []


def checked_out_count(pool: Any) -> int:
    """How many connections the pool has handed out and not had back."""
    if is_queued(pool):
        return max(int(pool.checkedout()), 0)
    records: list[Any] = []
    static = pool.__dict__.get("connection")
    if static is not None:
        records = [static]
    elif getattr(pool, "_all_conns", None) is not None:
        records = list(pool._all_conns)
    elif getattr(pool, "_conn", None) is not None:
        records = [pool._conn]
    return sum(1 for record in records if record.fairy_ref is not None)


def queued_records(pool: Any) -> list[Any]:
    """The idle connection records in a pool's queue, without taking them out."""
    queue = asyncio_queue(pool)
    items: Any = getattr(queue, "_queue", None) if queue is not None else None
    if items is None:
        items = getattr(pool._pool, "queue", ())
    return list(items)


def holds_no_connections(pool: Any) -> bool:
    """No connection checked out, and every pooled record closed or invalidated."""
    if pool.checkedout() != 0:
        return False
    if pool.checkedin() == 0:
        return True
    return all(record.dbapi_connection is None for record in queued_records(pool))


def queue_bound_elsewhere(pool: Any, loop: Any) -> bool:
    bound = getattr(asyncio_queue(pool), "_loop", None)
    return bound is not None and bound is not loop


def queue_can_move(pool: Any, loop: Any) -> bool:
    """The pool's asyncio queue can serve ``loop``: unbound, bound to it, or rebuilt for it.

    Python 3.9's asyncio.Queue takes its loop when it is built (3.10+ only when it first has
    to wait), so there every pool's queue belongs to the loop of its first checkin.  A queue
    of another loop that nobody waits on is rebuilt here, records and all, in order.
    """
    if not queue_bound_elsewhere(pool, loop):
        return True
    queue = asyncio_queue(pool)
    if getattr(queue, "_getters", None) or getattr(queue, "_putters", None):
        return False  # a task of the old loop waits on it
    records = list(queue._queue)
    del pool._pool.__dict__["_queue"]
    for record in records:
        pool._pool.put(record, False)  # builds the new queue, on the running loop
    return True


def release_record(
    pool: Any, record: Any, count_overflow: bool = True, loop_number: Optional[int] = None
) -> bool:
    """Drop one connection without I/O on its loop (``loop_number``, where known); True if
    its socket was closed."""
    dbapi_connection = record.dbapi_connection
    record.dbapi_connection = None
    if count_overflow:
        pool._dec_overflow()
    if dbapi_connection is None:
        return False
    return close_without_loop(dbapi_connection, loop_number)


def close_without_loop(dbapi_connection: Any, loop_number: Optional[int] = None) -> bool:
    """Close a DBAPI connection's socket without its loop; True if a socket was closed."""
    driver_connection = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    try:
        return _release.close_without_loop(driver_connection, loop_number)
    except Exception as exc:  # reported below; the pool must stay consistent
        # The connection is already out of the pool; say what could not be closed.
        app_log(
            "warning",
            "loopguard.release_failed",
            connection=repr(driver_connection),
            error=f"{type(exc).__name__}: {exc}",
        )
        return False


LoopOf = Callable[[Any], Optional[int]]  # a record -> the number of its connection's loop


def release_idle(pool: Any, loop: Any, loop_of: LoopOf) -> tuple[int, int]:
    """Empty the pool as dispose() would, but without touching the old loop."""
    from sqlalchemy.util.queue import Empty

    released = closed = 0
    while True:
        try:
            record = pool._pool.get(False)
        except Empty:
            break
        released += 1
        closed += release_record(pool, record, loop_number=loop_of(record))
    if queue_bound_elsewhere(pool, loop):
        # A queue that once waited on the old loop stays bound to it: start a fresh one.
        del pool._pool.__dict__["_queue"]
    return released, closed


def release_matching(
    pool: Any, matches: Callable[[Any], bool], loop_of: LoopOf
) -> tuple[Any, int, int]:
    """Release the idle connections for which ``matches(record)``, keeping the others in the
    queue, in order; the released stay queued without a DBAPI connection (dispose() discards
    them as usual).  Returns the first match and the counts."""
    if not is_queued(pool):  # the record stays where the pool keeps it, without a connection
        first = None
        released = closed = 0
        for record in idle_records(pool):
            if matches(record):
                first = first or record
                released += 1
                closed += release_record(
                    pool, record, count_overflow=False, loop_number=loop_of(record)
                )
        return first, released, closed
    if not any(matches(record) for record in queued_records(pool)):
        return None, 0, 0  # the common case: a look, without taking records out
    from sqlalchemy.util.queue import Empty

    kept = []
    first = None
    released = closed = 0
    while True:
        try:
            record = pool._pool.get(False)
        except Empty:
            break
        if matches(record):
            first = first or record
            released += 1
            closed += release_record(
                pool, record, count_overflow=False, loop_number=loop_of(record)
            )
        kept.append(record)
    for record in kept:
        pool._pool.put(record, False)
    return first, released, closed
