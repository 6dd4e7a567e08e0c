"""SQLAlchemy async engines: a pooled engine belongs to the loop of its first connection until
``await engine.dispose()`` (SQLAlchemy's documented rule for asyncio).

Where it hooks, and why each hook is the one it is:
- ``AsyncEngine.__init__`` (patched): there is no public "engine created" event, and this is
  the one place every async engine passes through, whatever name ``create_async_engine`` was
  imported under.  Records the creation site; deduplicated per pool (``execution_options()``
  builds new AsyncEngines on the same pool).
- ``QueuePool._do_get`` (patched): the public ``checkout`` event fires after pre-ping and recycle,
  which already do I/O on the connection; ``_do_get`` is the earliest point of every checkout.
  The pool-level check runs before anything is taken from the pool, the connection-level check
  right after, before SQLAlchemy touches the connection.
- ``QueuePool.dispose`` (patched): closing a connection is I/O on its loop; for idle
  connections of another loop (closed, or not the running one) the sockets are closed
  directly instead, so dispose() neither logs "Event loop is closed" nor leaks them.
- ``QueuePool._close_connection`` (patched): every close and terminate of a pooled connection
  passes through it (dispose, invalidation, recycle, and the garbage collector's cleanup of a
  connection never given back).  For a connection whose loop is closed that can only fail
  ("Event loop is closed", logged with a traceback, socket left open), so its socket is closed
  directly instead.  A traceback formatted while the collector runs inside an ``ast.parse()``
  (pytest rendering a failure) breaks that parse on CPython 3.11.0 to 3.11.7.
- ``QueuePool.recreate`` (patched): ``Engine.dispose()`` replaces the pool with
  ``pool.recreate()``; the new pool starts unbound.  (Not the ``engine_disposed`` event: a
  listener shows in every engine's ``dispatch``, and one on the ``Engine`` class switches on
  event dispatch for every connection of every engine.)

loopguard's facts live in tables of its own, keyed by ``id()`` of the pool or connection record
and emptied by a weak reference when that object goes: the ``info`` dicts, the pool's and the
records' attributes, the engines' event listeners stay exactly the application's.
"""

from __future__ import annotations

import gc
import re
import sys
import threading
import weakref
from typing import Any, Callable, Optional

from .. import _after_import, _context, _release, _sites
from .._log import app_logger
from .._patching import PatchStack
from .._report import (
    EVENT_FOREIGN_DISPOSE,
    EVENT_LOOP_CLOSED_WITH_CONNECTIONS,
    LG101,
    LG104,
    LG106,
    emit,
    likely_cause,
    raise_mismatch,
    warn_mismatch,
)
from .._state import STATE
from . import DidNotEnable

# 1.4.24 is the first release with ConnectionRecord.dbapi_connection and the adapted
# connections' driver_connection, which the guard reads; older releases are refused.
MIN_VERSION = (1, 4, 24)
_get_ident = threading.get_ident


class EngineInfo:
    """Facts about one engine that survive ``dispose()`` (which replaces its pool)."""

    __slots__ = (
        "_url",
        "_rendered",
        "pool_class",
        "site",
        "created_during",
        "created_in_loop",
        "__weakref__",
    )

    def __init__(
        self,
        url: Any,
        pool_class: str,
        site: Optional[_sites.Site],
        created_during: Optional[str],
        created_in_loop: Optional[bool],
    ) -> None:
        self._url = url  # SQLAlchemy's URL (immutable); rendered only when a record needs it
        self._rendered: Optional[str] = None
        self.pool_class = pool_class
        self.site = site
        self.created_during = created_during
        self.created_in_loop = created_in_loop

    @property
    def url(self) -> str:
        """The engine's URL without its password (rendering costs ~10 us: done on demand)."""
        if self._rendered is None:
            self._rendered = self._url.render_as_string(hide_password=True)
        return self._rendered

    def __repr__(self) -> str:
        where = str(self.site) if self.site else "unknown site"
        return f"<EngineInfo {self.url} ({self.pool_class}) created at {where}>"


class ConnectionInfo:
    """The loop of one DBAPI connection of a pool, kept in ``_connections`` for its record.

    ``dbapi_id`` and ``started`` (the record's ``starttime``) tell whether the record still
    holds that connection: SQLAlchemy clears ``record.info`` when it reconnects, but not this.
    """

    __slots__ = ("loop", "dbapi_id", "started", "opened_during", "opened_at", "record_ref")

    def __init__(
        self,
        loop: _context.LoopRef,
        dbapi_id: int,
        started: Any,
        opened_during: Optional[str],
        opened_at: Optional[_sites.Site],
    ) -> None:
        self.loop = loop
        self.dbapi_id = dbapi_id
        self.started = started
        self.opened_during = opened_during
        self.opened_at = opened_at
        self.record_ref: Optional[weakref.ref[Any]] = None  # drops the entry with the record

    def __repr__(self) -> str:
        return f"<ConnectionInfo on {self.loop.describe()}, opened {self.opened_during}>"


class PoolState:
    """Which loop one pool belongs to: its first connection's, until dispose() or healing."""

    __slots__ = ("engine", "binding", "heals", "pool_ref")

    def __init__(self, engine: EngineInfo) -> None:
        self.engine = engine
        self.binding: Optional[ConnectionInfo] = None  # the first connection's facts
        self.heals = 0
        self.pool_ref: Optional[weakref.ref[Any]] = None  # drops the entry with the pool

    def __repr__(self) -> str:
        owner = self.binding.loop.describe() if self.binding else "no loop yet"
        return f"<PoolState {self.engine.url}: {owner}>"


# Pools are weakly referenced: tracking never keeps an engine alive.
_pools: weakref.WeakKeyDictionary[Any, PoolState] = weakref.WeakKeyDictionary()
# The checkout path's lookups: id(pool) -> its state, id(connection record) -> the facts of
# its DBAPI connection.  Each entry is dropped by a weakref callback when its object goes,
# before its id can be reused.  Measured (callgrind, _do_get + checkin): ~500 instructions more
# per checkout than the pool's __dict__ and record.info were (id() builds an int; the starttime
# check ~150), ~0.2% of an engine.connect(); a WeakKeyDictionary's get() builds a weakref and
# runs Python code on every call, several times that.
_states: dict[int, PoolState] = {}
_connections: dict[int, ConnectionInfo] = {}


_guarded_pool_class: Any = None  # sqlalchemy.pool.QueuePool, set by setup()


def _is_guarded_pool(pool: Any) -> bool:
    # NullPool never keeps a connection, so it may legitimately cross loops; other pool
    # classes are not patched (yet), so tracking them would promise a check that never runs.
    return _guarded_pool_class is not None and isinstance(pool, _guarded_pool_class)


def track_engine(sync_engine: Any, site: Optional[_sites.Site], known_site: bool = True) -> None:
    pool = sync_engine.pool
    if not _is_guarded_pool(pool):
        return
    if id(pool) in _states:  # same pool, another AsyncEngine proxy: keep the first site
        return
    loop = _context.running_loop()
    info = EngineInfo(
        url=sync_engine.url,
        pool_class=type(pool).__name__,
        site=site,
        created_during=_context.current_test() if known_site else None,
        created_in_loop=(loop is not None) if known_site else None,
    )
    _set_state(pool, PoolState(info))


def _set_state(pool: Any, state: PoolState) -> None:
    key = id(pool)
    state.pool_ref = weakref.ref(pool, lambda _: _states.pop(key, None))
    _pools[pool] = state
    _states[key] = state


def _connection_info(record: Any) -> Optional[ConnectionInfo]:
    """The facts about the DBAPI connection ``record`` holds now (None: none, or stale)."""
    conn = _connections.get(id(record))
    if (
        conn is None
        or conn.dbapi_id != id(record.dbapi_connection)
        or conn.started != record.starttime
    ):
        return None
    return conn


def _make_tracking_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, sync_engine: Any, *args: Any, **kwargs: Any) -> None:
        original(self, sync_engine, *args, **kwargs)
        track_engine(self.sync_engine, _sites.user_site(_context.rootdir, skip=2))

    return __init__


def _make_tracking_recreate(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def recreate(self: Any) -> Any:
        pool = original(self)
        state = _states.get(id(self))
        # The new pool starts unbound: the next loop to connect owns it.
        if state is not None and _is_guarded_pool(pool) and id(pool) not in _states:
            _set_state(pool, PoolState(state.engine))
        return pool

    return recreate


def _make_guarded_do_get(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def _do_get(self: Any) -> Any:
        __tracebackhide__ = True
        state = _states.get(id(self))
        if state is None:
            return original(self)
        binding = state.binding
        # loop._ref: the weakref itself, a C call (LoopRef.__call__ adds a Python frame)
        owner = binding.loop._ref() if binding is not None else None
        # the usual case, answered without a system call (_context.runs_here(), inline)
        if owner is not None and getattr(owner, "_thread_id", None) == _get_ident():
            loop = owner
        else:
            loop = _context.running_loop()
            if loop is None:  # no loop: nothing asyncio-bound can be checked here
                return original(self)
            if binding is not None and owner is not loop:
                _on_pool_mismatch(self, state, loop)  # raises, or heals and returns
        while True:
            record = original(self)
            dbapi_connection = record.dbapi_connection
            if dbapi_connection is None:  # invalidated: it reconnects on this loop
                return record
            conn = _connections.get(id(record))  # _connection_info(), inline: the hot path
            if (
                conn is None
                or conn.dbapi_id != id(dbapi_connection)
                or conn.started != record.starttime
            ):
                # Adopt it for the loop it really belongs to: it may have been opened before
                # install(), or reconnected by an earlier checkout on another loop.
                conn = _adopt_connection(state, record, _driver_loop(dbapi_connection) or loop)
            elif binding is None:
                # Tracked again after uninstall() and install(): the connection kept its
                # facts, and the pool belongs to its loop as it did before.
                state.binding = binding = conn
            if conn.loop._ref() is loop:
                return record
            _on_connection_mismatch(self, state, record, conn, loop)  # raises, or releases it

    return _do_get


def _driver_loop(dbapi_connection: Any) -> Any:
    """The loop the driver connection is bound to (asyncpg: ``Connection._loop``), or None."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    return getattr(driver, "_loop", None)


def _adopt_connection(state: PoolState, record: Any, loop: Any) -> ConnectionInfo:
    """A connection seen for the first time: it belongs to ``loop``."""
    site = _sites.user_site(_context.rootdir, skip=3)
    info = ConnectionInfo(
        _context.LoopRef(loop),
        id(record.dbapi_connection),
        record.starttime,
        _context.current_test(),
        site,
    )
    key = id(record)
    info.record_ref = weakref.ref(record, lambda _: _connections.pop(key, None))
    _connections[key] = info
    if state.binding is None:
        state.binding = info
    return info


def _holds_no_connections(pool: Any) -> bool:
    """No connection checked out, and every pooled record closed or invalidated."""
    if pool.checkedout() != 0:
        return False
    if pool.checkedin() == 0:
        return True
    return all(record.dbapi_connection is None for record in _queued_records(pool))


def _asyncio_queue(pool: Any) -> Any:
    # AsyncAdaptedQueue creates its asyncio.Queue lazily (memoized in __dict__).
    return getattr(pool._pool, "__dict__", {}).get("_queue")


def _queue_bound_elsewhere(pool: Any, loop: Any) -> bool:
    queue = _asyncio_queue(pool)
    bound = getattr(queue, "_loop", None)
    return bound is not None and bound is not loop


def _queue_can_move(pool: Any, loop: Any) -> bool:
    """The pool's asyncio queue can serve ``loop``: unbound, bound to it, or rebuilt for it.

    Python 3.9's asyncio.Queue takes its loop when it is built (3.10+ only when it first has
    to wait), so there every pool's queue belongs to the loop of its first checkin.  A queue
    of another loop that nobody waits on is rebuilt here, records and all, in order.
    """
    if not _queue_bound_elsewhere(pool, loop):
        return True
    queue = _asyncio_queue(pool)
    if getattr(queue, "_getters", None) or getattr(queue, "_putters", None):
        return False  # a task of the old loop waits on it
    records = list(queue._queue)
    del pool._pool.__dict__["_queue"]
    for record in records:
        pool._pool.put(record, False)  # builds the new queue, on the running loop
    return True


def _on_pool_mismatch(pool: Any, state: PoolState, loop: Any) -> None:
    __tracebackhide__ = True
    if _holds_no_connections(pool) and _queue_can_move(pool, loop):
        # Nothing of the old loop is left in this pool (all connections were closed or
        # invalidated): using it on a new loop is harmless, so it is not reported.
        state.binding = None
        return
    if STATE.mode == "raise":
        raise raise_mismatch(_mismatch_record(state, state.binding, loop, "raised"))
    record = _mismatch_record(state, state.binding, loop, "warned")
    record["released"], record["sockets_closed"] = _release_idle_connections(pool, loop)
    state.binding = None
    state.heals += 1
    warn_mismatch(record)


def _on_connection_mismatch(
    pool: Any, state: PoolState, record: Any, conn: ConnectionInfo, loop: Any
) -> None:
    __tracebackhide__ = True
    if STATE.mode == "raise":
        # Back into the pool untouched: its own loop may still use it.
        pool._do_return_conn(record)
        raise raise_mismatch(_mismatch_record(state, conn, loop, "raised"))
    log_record = _mismatch_record(state, conn, loop, "warned")
    log_record["released"] = 1
    log_record["sockets_closed"] = int(_release_record(pool, record))
    warn_mismatch(log_record)


def _release_record(pool: Any, record: Any, count_overflow: bool = True) -> bool:
    """Drop one connection without I/O on its loop; True if its socket was closed."""
    dbapi_connection = record.dbapi_connection
    record.dbapi_connection = None
    if count_overflow:
        pool._dec_overflow()
    if dbapi_connection is None:
        return False
    return _close_without_loop(dbapi_connection)


def _close_without_loop(dbapi_connection: Any) -> bool:
    """Close a DBAPI connection's socket without its loop; True if a socket was closed."""
    driver_connection = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    try:
        return _release.close_without_loop(driver_connection)
    except Exception as exc:  # reported below; the pool must stay consistent
        # The connection is already out of the pool; say what could not be closed.
        app_logger().warning(
            "loopguard.release_failed",
            connection=repr(driver_connection),
            error=f"{type(exc).__name__}: {exc}",
        )
        return False


def _make_close_connection(original: Callable[..., None]) -> Callable[..., None]:
    def _close_connection(self: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
        loop = _driver_loop(connection)
        if loop is None or not loop.is_closed():
            return original(self, connection, *args, **kwargs)
        # Closing or terminating it would need its loop, which is closed: SQLAlchemy would
        # log "Event loop is closed" with a traceback and leave the socket open.
        _close_without_loop(connection)
        return None

    return _close_connection


def _release_idle_connections(pool: Any, loop: Any) -> tuple[int, int]:
    """Empty the pool as dispose() would, but without touching the old loop."""
    from sqlalchemy.util.queue import Empty

    released = closed = 0
    while True:
        try:
            record = pool._pool.get(False)
        except Empty:
            break
        released += 1
        closed += _release_record(pool, record)
    if _queue_bound_elsewhere(pool, loop):
        # A queue that once waited on the old loop stays bound to it: start a fresh one.
        del pool._pool.__dict__["_queue"]
    return released, closed


def _make_guarded_dispose(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def dispose(self: Any) -> None:
        state = _states.get(id(self))
        if state is not None:
            loop = _context.running_loop()
            foreign, released, closed = _release_foreign_idle_connections(self, loop)
            if foreign is not None:
                record = _leak_record(state, foreign, LG104, "released")
                record.update(current_loop_id=_context.loop_id(loop) if loop else None)
                record.update(released=released, sockets_closed=closed)
                emit(record, EVENT_FOREIGN_DISPOSE)
        original(self)

    return dispose


def _release_foreign_idle_connections(
    pool: Any, loop: Any
) -> tuple[Optional[ConnectionInfo], int, int]:
    """Before dispose(): idle connections of another loop are released without I/O.

    They stay in the queue with no DBAPI connection, so dispose() counts and discards them
    as usual; connections of the running loop are closed by dispose() itself, gracefully.
    Returns the first foreign connection's facts (None if there was none) and the counts.
    """
    if not any(_is_foreign(record, loop) for record in _queued_records(pool)):
        return None, 0, 0  # the common case: a look, without taking records out
    from sqlalchemy.util.queue import Empty

    kept = []
    first_foreign: Optional[ConnectionInfo] = None
    released = closed = 0
    while True:
        try:
            record = pool._pool.get(False)
        except Empty:
            break
        if _is_foreign(record, loop):
            first_foreign = first_foreign or _connection_info(record)
            released += 1
            closed += _release_record(pool, record, count_overflow=False)
        kept.append(record)
    for record in kept:
        pool._pool.put(record, False)
    return first_foreign, released, closed


def _is_foreign(record: Any, loop: Any) -> bool:
    """An open connection that belongs to a loop other than ``loop``."""
    conn = _connection_info(record)
    return conn is not None and record.dbapi_connection is not None and conn.loop() is not loop


def _make_reporting_close(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def close(self: Any) -> None:
        if _pools and not self.is_closed():  # once per loop: nothing on the hot path
            _report_connections_left_on(self)
        original(self)

    return close


def _report_connections_left_on(loop: Any) -> None:
    """A loop is closing while pools still hold its connections: they can only leak now."""
    for pool, state in list(_pools.items()):
        binding = state.binding
        if binding is None or binding.loop() is not loop:
            continue
        idle = sum(
            1
            for record in _queued_records(pool)
            if record.dbapi_connection is not None
            and getattr(_connection_info(record), "loop", lambda: None)() is loop
        )
        held = idle + max(pool.checkedout(), 0)
        if held:
            record = _leak_record(state, binding, LG106, "reported")
            record.update(current_loop_id=binding.loop.id, held=held)
            emit(record, EVENT_LOOP_CLOSED_WITH_CONNECTIONS)


def _queued_records(pool: Any) -> list[Any]:
    """The idle connection records in a pool's queue, without taking them out."""
    queue = _asyncio_queue(pool)
    # asyncio.Queue keeps its items in ._queue; SQLAlchemy's thread-safe Queue in .queue.
    items: Any = getattr(queue, "_queue", None) if queue is not None else None
    if items is None:
        items = getattr(pool._pool, "queue", ())
    return list(items)


def _leak_record(
    state: PoolState, binding: ConnectionInfo, code: str, action: str
) -> dict[str, Any]:
    """The fields every SQLAlchemy record shares: the engine, its binding, the current use."""
    return _record_and_site(state, binding, code, action)[0]


def _record_and_site(
    state: PoolState, binding: ConnectionInfo, code: str, action: str
) -> tuple[dict[str, Any], Optional[_sites.Site]]:
    used = _sites.user_site(_context.rootdir, skip=3)
    site = state.engine.site
    record = {
        "code": code,
        "action": action,
        "resource": "SQLAlchemy AsyncEngine",
        "url": state.engine.url,
        "pool_class": state.engine.pool_class,
        "created_at": site.location if site else None,
        "created_in": site.function if site else None,
        "created_during": state.engine.created_during,
        "bound_during": binding.opened_during,
        "bound_at": str(binding.opened_at) if binding.opened_at else None,
        "used_at": str(used) if used else None,
        "used_during": _context.current_test(),
        "owner_loop_id": binding.loop.id,
        "owner_loop_closed": binding.loop.is_closed(),
    }
    return record, used


def _mismatch_record(
    state: PoolState,
    binding: Optional[ConnectionInfo],
    loop: Any,
    action: str,
) -> dict[str, Any]:
    """The facts of one mismatch; ``binding`` is the connection that tied it to its loop."""
    assert binding is not None
    owner_loop = binding.loop()
    if owner_loop is None or owner_loop.is_closed():
        owner_state = "closed"
    elif owner_loop.is_running():
        owner_state = "running"
    else:
        owner_state = "idle"
    record, used = _record_and_site(state, binding, LG101, action)
    record.update(
        current_loop_id=_context.loop_id(loop),
        cause=likely_cause(owner_state, in_test=record["used_during"] is not None),
        # message-only helpers (not logged)
        created_in_loop=state.engine.created_in_loop,
        owner_loop=binding.loop.describe(),
        used_site=(used.filename, used.lineno) if used else None,
    )
    return record


def _wrap_loop_close(patches: PatchStack) -> Optional[_after_import.AfterImport]:
    """Wrap close() of asyncio's loops, and of uvloop's now or when (if) uvloop is imported.

    uvloop is not imported for this: a process that never uses it does not pay its import
    (~5 ms).  Returns the hook waiting for uvloop's import, if it is not imported yet.
    """
    import asyncio

    patches.wrap(asyncio.BaseEventLoop, "close", _make_reporting_close)

    def wrap_uvloop(uvloop: Any) -> None:
        patches.wrap(uvloop.Loop, "close", _make_reporting_close)

    uvloop = sys.modules.get("uvloop")
    if uvloop is not None:
        wrap_uvloop(uvloop)
        return None
    # teardown() cancels the hook, also for an import of uvloop already under way
    return _after_import.call_after_import("uvloop", wrap_uvloop)


def _adopt_existing_engines() -> None:
    """Engines created before install(): guarded too, with their creation site unknown."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    for obj in gc.get_objects():
        if type(obj) is AsyncEngine:
            track_engine(obj.sync_engine, None, known_site=False)


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"1.4.24"`` -> ``(1, 4, 24)``; pre-release tails are dropped (``"2.0.0b4"`` -> 2.0.0)."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group(0).split(".")[:3]) if match else (0,)


class SQLAlchemyIntegration:
    name = "sqlalchemy"

    def __init__(self) -> None:
        self._uvloop_hook: Optional[_after_import.AfterImport] = None

    def setup(self, patches: PatchStack) -> None:
        global _guarded_pool_class
        # No AsyncEngine can exist before its module is imported: then there is no need to
        # look for engines created before install() (a gc scan, ~5-10 ms in a test run).
        engines_may_exist = "sqlalchemy.ext.asyncio" in sys.modules
        try:
            import sqlalchemy
            from sqlalchemy.ext.asyncio import AsyncEngine
            from sqlalchemy.pool import QueuePool
        except ImportError as exc:
            msg = f"SQLAlchemy is not installed ({exc}); pip install 'sqlalchemy[asyncio]'"
            raise DidNotEnable(msg) from exc
        if _version_tuple(sqlalchemy.__version__) < MIN_VERSION:
            oldest = ".".join(map(str, MIN_VERSION))
            msg = (
                f"SQLAlchemy {sqlalchemy.__version__} is too old: loopguard supports "
                f"{oldest} and newer; pip install -U 'sqlalchemy[asyncio]>={oldest}'"
            )
            raise DidNotEnable(msg)
        _guarded_pool_class = QueuePool
        patches.wrap(QueuePool, "_do_get", _make_guarded_do_get)
        patches.wrap(QueuePool, "dispose", _make_guarded_dispose)
        patches.wrap(QueuePool, "_close_connection", _make_close_connection)
        patches.wrap(QueuePool, "recreate", _make_tracking_recreate)
        self._uvloop_hook = _wrap_loop_close(patches)
        patches.wrap(AsyncEngine, "__init__", _make_tracking_init)
        if engines_may_exist:
            _adopt_existing_engines()

    def teardown(self) -> None:
        global _guarded_pool_class
        _guarded_pool_class = None
        if self._uvloop_hook is not None:
            _after_import.cancel(self._uvloop_hook)
            self._uvloop_hook = None
        # (The connections' facts stay, weakly held: installed again, loopguard knows which
        # loop each pooled connection belongs to.)
        _states.clear()
        _pools.clear()

    def __repr__(self) -> str:
        return f"<SQLAlchemyIntegration tracking {len(_pools)} pools>"
