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
  (pytest rendering a failure) breaks that parse on CPython 3.11.0 to 3.11.7.  In a forked
  child, a connection of the parent's loop is left alone (kept, never closed).
- ``QueuePool.recreate`` (patched): ``Engine.dispose()`` replaces the pool with
  ``pool.recreate()``; the new pool starts unbound.  (Not the ``engine_disposed`` event: a
  listener shows in every engine's ``dispatch``, and one on the ``Engine`` class switches on
  event dispatch for every connection of every engine.)

loopguard's facts live in registries of its own (``_registry``), keyed by ``id()`` of the pool
or connection record and emptied by a weak reference when that object goes: the ``info``
dicts, the pool's and the records' attributes, the engines' event listeners stay exactly the
application's.
"""

from __future__ import annotations

import gc
from typing import Any, Callable

from .. import _context, _loop_close, _loops, _release, _sites
from .._emit import emit, raise_record, warn_record
from .._loops import (
    inherited,
    loop_id,
    on_fork_in_child,
    remove_fork_listener,
    running_loop,
)
from .._registry import Origin
from .._state import STATE
from . import _sqlalchemy_pool as pools
from ._base import Integration, Patch
from ._sqlalchemy_facts import (
    CONNECTIONS,
    DRIVERS,
    POOL_RESOURCE,
    POOLS,
    ConnectionFacts,
    EngineFacts,
    PoolState,
    _adopt_connection,
    _bind,
    _bound_on,
    _connection_facts,
    _driver_loop,
    _loop_number_of,
    _mismatch_record,
    _pool_record,
)

_current_test = _context.current_test
_fixtures_in_setup = _context.fixtures_in_setup  # the list itself: appended to, never rebound
_fixture_in_setup = _context.fixture_in_setup  # the innermost fixture whose setup is running

# 1.4.24 is the first release with ConnectionRecord.dbapi_connection and the adapted
# connections' driver_connection, which the guard reads; older releases are refused.
MIN_VERSION = (1, 4, 24)

_pool_lookup = POOLS.lookup
_connection_lookup = CONNECTIONS.lookup

_unguarded_pool_class: Any = None  # sqlalchemy.pool.NullPool, set by setup()


def _is_guarded_pool(pool: Any) -> bool:
    # Every pool that keeps connections (QueuePool and its subclasses, StaticPool,
    # SingletonThreadPool, AssertionPool, third-party pools); NullPool keeps none, so it may
    # legitimately cross loops.
    return _unguarded_pool_class is not None and not isinstance(pool, _unguarded_pool_class)


def track_engine(sync_engine: Any, origin: Origin) -> None:
    pool = sync_engine.pool
    if not _is_guarded_pool(pool):
        return
    if pool in POOLS:  # same pool, another AsyncEngine proxy: keep the first site
        return
    facts = EngineFacts(sync_engine.url, type(pool).__name__, origin)
    POOLS.add(pool, PoolState(facts, pools.is_queued(pool)))


def _make_tracking_pool_factory(original: Callable[..., Any]) -> Callable[..., Any]:
    """``create_async_pool_from_url()``: a pool with no AsyncEngine around it, reported at the
    line that created it (the first frame outside SQLAlchemy)."""

    def _create_pool_from_url(url: Any, **kwargs: Any) -> Any:
        pool = original(url, **kwargs)
        if _is_guarded_pool(pool) and pool not in POOLS:
            from sqlalchemy.engine import make_url

            site = _sites.user_site(_context.rootdir, skip=2)
            origin = Origin(site, _context.current_test(), running_loop() is not None)
            facts = EngineFacts(make_url(url), type(pool).__name__, origin)
            facts.resource = POOL_RESOURCE
            POOLS.add(pool, PoolState(facts, pools.is_queued(pool)))
        return pool

    return _create_pool_from_url


def _make_tracking_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, sync_engine: Any, *args: Any, **kwargs: Any) -> None:
        original(self, sync_engine, *args, **kwargs)
        site = _sites.user_site(_context.rootdir, skip=2)
        loop = running_loop()
        track_engine(self.sync_engine, Origin(site, _context.current_test(), loop is not None))

    return __init__


def _make_tracking_recreate(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def recreate(self: Any) -> Any:
        pool = original(self)
        state = _pool_lookup(id(self))
        # The new pool starts unbound: the next loop to connect owns it.
        if state is not None and _is_guarded_pool(pool) and pool not in POOLS:
            POOLS.add(pool, PoolState(state.origin, pools.is_queued(pool)))
        return pool

    return recreate


def _make_guarded_do_get(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def _do_get(self: Any) -> Any:
        __tracebackhide__ = True
        state = _pool_lookup(id(self))
        if state is None:
            return original(self)
        binding = state.binding
        # loop._ref: the weakref itself, a C call (LoopRef.__call__ adds a Python frame)
        owner = binding.loop._ref() if binding is not None else None
        if getattr(owner, "_thread_id", None) == _loops._thread_ident():
            loop = owner  # current_loop(owner) inline: its loop runs here
        else:
            loop = running_loop()
            if loop is None:  # no loop: nothing asyncio-bound can be checked here
                return original(self)
            if loop is not owner and binding is not None and state.queued:
                _on_pool_mismatch(self, state, loop)  # raises, or heals and returns
        while True:
            record = original(self)
            dbapi_connection = record.dbapi_connection
            if dbapi_connection is None:  # invalidated: it reconnects on this loop
                return record
            conn = _connection_lookup(id(record))
            # Stale facts: the record reconnected.  Each connect sets a new ``starttime``, a
            # new float object, and the facts hold the old one alive (its address cannot be
            # reused): an identity test tells every reconnect, even two in one clock tick, for
            # the cost of one compare (the DBAPI connection's id() and a value compare, as in
            # ``ConnectionFacts.holds``, cost ~450 instructions more per checkout).
            if conn is None or conn.started is not record.starttime:
                # Adopt it for the loop it really belongs to: it may have been opened before
                # install(), or reconnected by an earlier checkout on another loop.
                conn = _adopt_connection(
                    self, state, record, _driver_loop(dbapi_connection) or loop
                )
            elif binding is None:
                _bind(self, state, conn.binding)  # tracked again after a reinstall
                binding = conn.binding
            if conn.loop() is loop:  # conn.binding.loop's weak reference, kept on the facts
                # Only the test: where it was checked out costs a stack walk, too much here.
                # (Out of pytest nothing is noted, and a report made there reads none.)
                if _context.in_pytest:
                    conn.checked_out_during = _current_test()
                    conn.checked_out_by = _fixture_in_setup() if _fixtures_in_setup else None
                return record
            _on_connection_mismatch(self, state, record, conn, loop)  # raises, or releases
            if not state.queued:
                return record  # released: the pool's one record reconnects on this loop

    return _do_get


def _on_pool_mismatch(pool: Any, state: PoolState, loop: Any) -> None:
    __tracebackhide__ = True
    if pools.holds_no_connections(pool) and pools.queue_can_move(pool, loop):
        # Nothing of the old loop is left in this pool (all connections were closed or
        # invalidated): using it on a new loop is harmless, so it is not reported.
        state.binding = None
        return
    binding = state.binding
    assert binding is not None
    if STATE.mode == "raise":
        raise raise_record(_mismatch_record(state, binding, loop, "raised"))
    released, closed = pools.release_idle(pool, loop, _loop_number_of)
    state.binding = None
    state.heals += 1
    warn_record(
        _mismatch_record(state, binding, loop, "warned").replace(
            released=released, sockets_closed=closed
        )
    )


def _on_connection_mismatch(
    pool: Any, state: PoolState, record: Any, conn: ConnectionFacts, loop: Any
) -> None:
    __tracebackhide__ = True
    if STATE.mode == "raise":
        # Back into the pool untouched: its own loop may still use it.
        pool._do_return_conn(record)
        raise raise_record(_mismatch_record(state, conn.binding, loop, "raised"))
    closed = int(
        pools.release_record(
            pool, record, count_overflow=state.queued, loop_number=conn.binding.loop.id
        )
    )
    warn_record(
        _mismatch_record(state, conn.binding, loop, "warned").replace(
            released=1, sockets_closed=closed
        )
    )


def _make_guarded_dispose(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def dispose(self: Any) -> None:
        state = _pool_lookup(id(self))
        if state is not None:
            _release_foreign_before_dispose(self, state)
        original(self)

    return dispose


def _release_foreign_before_dispose(pool: Any, state: PoolState) -> None:
    """LG104: idle connections of another loop are released without I/O before dispose()
    closes the rest (gracefully, on their own, running loop)."""
    loop = running_loop()
    found: list[ConnectionFacts] = []  # the facts of the foreign connections, in queue order

    def foreign(record: Any) -> bool:
        conn = _connection_facts(record)
        if conn is None or record.dbapi_connection is None or conn.binding.loop() is loop:
            return False
        found.append(conn)
        return True

    first, released, closed = pools.release_matching(pool, foreign, _loop_number_of)
    if first is not None:
        record, _ = _pool_record(state, found[0].binding, "LG104", "released", loop)
        emit(record.replace(released=released, sockets_closed=closed))


def _report_connections_left_on(loop: Any) -> None:
    """LG106: a loop is closing while pools still hold its connections: they can only leak."""
    bound = _bound_on.pop(loop_id(loop), None)
    if not bound:
        return
    for key in bound:
        found = POOLS.find(key)
        if found is None:  # collected (or disposed and untracked) since
            continue
        pool, state = found
        binding = state.binding
        if binding is None or binding.loop() is not loop:
            continue
        idle = 0
        for record in pools.idle_records(pool):
            conn = _connection_facts(record)
            if record.dbapi_connection is not None and conn and conn.binding.loop() is loop:
                idle += 1
        held = idle + pools.checked_out_count(pool)
        if held:
            record, _ = _pool_record(state, binding, "LG106", "reported", loop)
            emit(record.replace(held=held))


def _make_close_connection(original: Callable[..., None]) -> Callable[..., None]:
    def _close_connection(self: Any, connection: Any, *args: Any, **kwargs: Any) -> None:
        loop = _driver_loop(connection)
        if loop is None or not (loop.is_closed() or inherited(loop_id(loop))):
            return original(self, connection, *args, **kwargs)
        # Closing or terminating it would need its loop, which is closed (SQLAlchemy would log
        # "Event loop is closed" with a traceback and leave the socket open), or the parent
        # process's (inherited through fork()): its socket is closed directly, or kept.
        pools.close_without_loop(connection)
        return None

    return _close_connection


def _keep_inherited_connections() -> None:
    """In a forked child: the pooled connections of the parent's loops are kept out of the
    garbage collector (a driver closing them when collected, as asyncpg and psycopg do,
    would close or unregister the parent's sockets), so that ``dispose(close=False)`` in the
    child, SQLAlchemy's recipe for forks, leaves the parent's connections working."""
    for record, conn in CONNECTIONS.live():
        if inherited(conn.binding.loop.id) and record.dbapi_connection is not None:
            _release.keep_for_parent(record.dbapi_connection)


def _adopt_existing_engines() -> None:
    """Engines created before install(): guarded too, with their creation site unknown."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    unknown = Origin(None, None, None, known=False)
    for obj in gc.get_objects():
        if type(obj) is AsyncEngine:
            track_engine(obj.sync_engine, unknown)


# Every pool class that keeps connections has a _do_get: the earliest point of each checkout.
# (SingletonThreadPool.connect() also hands a thread its current fairy again without it:
# statements on that connection are checked one by one, by _sqlalchemy_held.)
_POOL_CLASSES = ("QueuePool", "StaticPool", "SingletonThreadPool", "AssertionPool")


class SQLAlchemyIntegration(Integration):
    name = "sqlalchemy"
    module = "sqlalchemy.ext.asyncio"
    min_version = MIN_VERSION
    label = "SQLAlchemy"
    requirement = "sqlalchemy[asyncio]"
    patches = (
        *(
            Patch(f"sqlalchemy.pool:{pool_class}", attribute, wrapper)
            for pool_class in _POOL_CLASSES
            for attribute, wrapper in (
                ("_do_get", _make_guarded_do_get),
                ("dispose", _make_guarded_dispose),
                ("_close_connection", _make_close_connection),
                ("recreate", _make_tracking_recreate),
            )
        ),
        Patch("sqlalchemy.ext.asyncio:AsyncEngine", "__init__", _make_tracking_init),
        # What create_async_pool_from_url() calls, looked up when called: it is patched
        # whatever name the application imported the function under (SQLAlchemy 2.0.10+).
        Patch(
            "sqlalchemy.ext.asyncio.engine",
            "_create_pool_from_url",
            _make_tracking_pool_factory,
            required=False,
        ),
    )

    def setup(self) -> None:
        global _unguarded_pool_class
        from sqlalchemy.pool import NullPool

        _unguarded_pool_class = NullPool
        _loop_close.subscribe(_report_connections_left_on)
        on_fork_in_child(_keep_inherited_connections)
        if self.imported_before_install:
            # Only then can an AsyncEngine exist already (a gc scan: ~5-10 ms in a test run).
            _adopt_existing_engines()

    def teardown(self) -> None:
        global _unguarded_pool_class
        _unguarded_pool_class = None
        _loop_close.unsubscribe(_report_connections_left_on)
        remove_fork_listener(_keep_inherited_connections)
        POOLS.clear()
        CONNECTIONS.clear()
        DRIVERS.clear()
        _bound_on.clear()

    def __repr__(self) -> str:
        return f"<SQLAlchemyIntegration tracking {len(POOLS)} pools>"
