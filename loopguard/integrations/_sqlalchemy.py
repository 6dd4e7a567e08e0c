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

import contextlib
import gc
import weakref
from typing import Any, Callable, Optional

from .. import _context, _loop_close, _release, _secrets, _sites
from .._causes import likely_cause
from .._emit import emit, raise_record, warn_record
from .._loops import (
    LoopRef,
    current_loop,
    inherited,
    loop_id,
    on_fork_in_child,
    remove_fork_listener,
    running_loop,
)
from .._record import Record
from .._registry import Binding, Origin, Registry, Tracked
from .._state import STATE
from . import _sqlalchemy_pool as pools
from ._base import Integration, Patch

_current_test = _context.current_test
_fixtures_in_setup = _context.fixtures_in_setup  # the list itself: appended to, never rebound
_fixture_in_setup = _context.fixture_in_setup  # the innermost fixture whose setup is running

# 1.4.24 is the first release with ConnectionRecord.dbapi_connection and the adapted
# connections' driver_connection, which the guard reads; older releases are refused.
MIN_VERSION = (1, 4, 24)
RESOURCE = "SQLAlchemy AsyncEngine"
POOL_RESOURCE = "SQLAlchemy pool"  # made by create_async_pool_from_url()


class EngineFacts(Origin):
    """Where an engine was created, and its URL: shared by the engine's successive pools."""

    __slots__ = ("_url", "_rendered", "pool_class", "resource")

    def __init__(self, url: Any, pool_class: str, origin: Origin) -> None:
        super().__init__(
            origin.site,
            origin.created_during,
            origin.created_in_loop,
            origin.known,
            origin.fixture_entry,
        )
        self._url = url  # SQLAlchemy's URL (immutable); rendered only when a record needs it
        self._rendered: Optional[str] = None
        self.pool_class = pool_class
        self.resource = RESOURCE  # POOL_RESOURCE: a pool with no engine around it

    @property
    def url(self) -> str:
        """The engine's URL without its secrets (rendering costs ~10 us: done on demand)."""
        if self._rendered is None:
            self._rendered = _secrets.mask_sqlalchemy_url(self._url)
        return self._rendered


class PoolState(Tracked):
    """Which loop one pool belongs to: its first connection's, until dispose() or healing.

    ``queued``: a QueuePool, whose idle connections wait in a queue that can be checked as a
    whole before a checkout; the other pools (StaticPool, SingletonThreadPool, AssertionPool)
    are checked connection by connection."""

    __slots__ = ("queued",)
    origin: EngineFacts

    def __init__(self, origin: EngineFacts, queued: bool = True) -> None:
        super().__init__(origin)
        self.queued = queued


class ConnectionFacts:
    """The loop of one DBAPI connection, kept for its pool record.

    ``dbapi_id`` and ``started`` (the record's ``starttime``) tell whether the record still
    holds that connection: a record that reconnects gets a new DBAPI connection (whose id may
    be the old one's, reused) and a new start time.

    For the checks of a connection held open (``_sqlalchemy_held``): ``loop``, a weak
    reference to its loop (read at each transaction's end), ``owner``, the same where each
    statement is checked (None where the driver checks every operation itself: asyncpg),
    ``state`` (its pool's facts), ``record`` (a weak reference to the record) and
    ``checked_out_during`` (the test of its latest checkout).
    """

    __slots__ = (
        "binding",
        "dbapi_id",
        "started",
        "loop",
        "owner",
        "state",
        "record",
        "checked_out_during",
        "checked_out_by",
    )

    def __init__(
        self, binding: Binding, dbapi_id: int, started: Any, state: PoolState, record: Any
    ) -> None:
        self.binding = binding
        self.dbapi_id = dbapi_id
        self.started = started
        self.state = state
        self.record = weakref.ref(record)
        self.loop: Callable[[], Any] = binding.loop._ref  # the loop's weak reference
        self.owner: Optional[Callable[[], Any]] = None  # the same, where statements are checked
        self.checked_out_during: Optional[str] = None
        # The pytest fixture whose setup checked it out, as _context.fixtures_in_setup holds
        # it (described only in a record): the fixture a held connection comes from.
        self.checked_out_by: Optional[tuple[Any, Any]] = None

    def holds(self, record: Any) -> bool:
        """``record`` still holds the DBAPI connection these facts are about."""
        return self.dbapi_id == id(record.dbapi_connection) and self.started == record.starttime

    def __repr__(self) -> str:
        return f"<ConnectionFacts {self.binding!r}>"


# Pools and connection records: held weakly, nothing stored on them.
POOLS: Registry[PoolState] = Registry("sqlalchemy pools")
CONNECTIONS: Registry[ConnectionFacts] = Registry("sqlalchemy connections")
# The same facts by driver connection (asyncpg's Connection, psycopg's AsyncConnection, ...):
# where a driver's own check or a cursor knows only that.
DRIVERS: Registry[ConnectionFacts] = Registry("sqlalchemy driver connections")
_pool_lookup = POOLS.lookup
_connection_lookup = CONNECTIONS.lookup

_unguarded_pool_class: Any = None  # sqlalchemy.pool.NullPool, set by setup()

# Loop number -> the ids of the pools bound on that loop (in the order they were bound): the
# pools a closing loop may leave connections in (LG106), found without scanning every tracked
# pool.  Disposed engines' pools wait in POOLS for the garbage collector, often until a full
# collection: a scan at each loop close made each test of a long suite cost more than the
# one before.  A pool bound again on another loop is listed under both; the report checks
# the binding it has when the loop closes.
_bound_on: dict[int, dict[int, None]] = {}


def _bind(pool: Any, state: PoolState, binding: Binding) -> None:
    state.binding = binding
    if pool is not None:  # None: a held connection's record whose pool was not found
        _bound_on.setdefault(binding.loop.id, {})[id(pool)] = None


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
        loop = current_loop(owner)
        if loop is None:  # no loop: nothing asyncio-bound can be checked here
            return original(self)
        if binding is not None and loop is not owner and state.queued:
            _on_pool_mismatch(self, state, loop)  # raises, or heals and returns
        while True:
            record = original(self)
            dbapi_connection = record.dbapi_connection
            if dbapi_connection is None:  # invalidated: it reconnects on this loop
                return record
            conn = _connection_lookup(id(record))
            if (
                conn is None
                or conn.dbapi_id != id(dbapi_connection)
                or conn.started != record.starttime
            ):
                # Adopt it for the loop it really belongs to: it may have been opened before
                # install(), or reconnected by an earlier checkout on another loop.
                conn = _adopt_connection(
                    self, state, record, _driver_loop(dbapi_connection) or loop
                )
            elif binding is None:
                _bind(self, state, conn.binding)  # tracked again after a reinstall
                binding = conn.binding
            if conn.binding.loop._ref() is loop:
                # Only the test: where it was checked out costs a stack walk, too much here.
                conn.checked_out_during = _current_test()
                conn.checked_out_by = _fixture_in_setup() if _fixtures_in_setup else None
                return record
            _on_connection_mismatch(self, state, record, conn, loop)  # raises, or releases
            if not state.queued:
                return record  # released: the pool's one record reconnects on this loop

    return _do_get


def _driver_loop(dbapi_connection: Any) -> Any:
    """The loop the driver connection is bound to (asyncpg: ``Connection._loop``), or None."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    return getattr(driver, "_loop", None)


def _adopt_connection(pool: Any, state: PoolState, record: Any, loop: Any) -> ConnectionFacts:
    """A connection seen for the first time: it belongs to ``loop``."""
    site = _sites.user_site(_context.rootdir, skip=3)
    binding = Binding(LoopRef(loop), site, _context.current_test())
    facts = ConnectionFacts(binding, id(record.dbapi_connection), record.starttime, state, record)
    facts.checked_out_during = binding.during
    facts.checked_out_by = _fixture_in_setup() if _fixtures_in_setup else None
    driver = getattr(record.dbapi_connection, "driver_connection", None)
    if driver is not None:
        if not (type(driver).__module__ or "").startswith("asyncpg"):
            # asyncpg checks every operation itself (the asyncpg guard reports it as LG101);
            # the other drivers are checked by loopguard's hooks in SQLAlchemy's adapters.
            facts.owner = binding.loop._ref
        with contextlib.suppress(TypeError):  # a driver connection without weak references
            DRIVERS.add(driver, facts)
    conn = CONNECTIONS.add(record, facts)
    if state.binding is None:
        _bind(pool, state, binding)
    return conn


def _connection_facts(record: Any) -> Optional[ConnectionFacts]:
    """The facts of the DBAPI connection ``record`` holds now (None: none known, or stale)."""
    conn = _connection_lookup(id(record))
    if (
        conn is None
        or conn.dbapi_id != id(record.dbapi_connection)
        or conn.started != record.starttime
    ):
        return None
    return conn


def _loop_number_of(record: Any) -> Optional[int]:
    conn = _connection_facts(record)
    return conn.binding.loop.id if conn is not None else None


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


def _pool_record(
    state: PoolState, binding: Binding, code: str, action: str, loop: Any
) -> tuple[Record, Optional[_sites.Site]]:
    """The facts every SQLAlchemy record shares: the engine, its binding, the current use."""
    used = _sites.user_site(_context.rootdir, skip=3)
    engine = state.origin
    site = engine.site
    record = Record(
        code=code,
        action=action,
        resource=engine.resource,
        url=engine.url,
        pool_class=engine.pool_class,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=engine.created_during,
        created_by=engine.fixture,
        bound_during=binding.during,
        bound_at=str(binding.site) if binding.site else None,
        used_at=str(used) if used else None,
        used_during=_context.current_test(),
        owner_loop_id=binding.loop.id,
        owner_loop_closed=binding.loop.is_closed(),
        current_loop_id=loop_id(loop) if loop is not None else None,
        owner_loop=binding.loop.describe(),
        created_in_loop=engine.created_in_loop,
    )
    return record, used


def _mismatch_record(state: PoolState, binding: Binding, loop: Any, action: str) -> Record:
    """LG101: ``binding`` is the connection that tied the pool to its loop."""
    record, used = _pool_record(state, binding, "LG101", action, loop)
    return record.replace(
        cause=likely_cause(binding.loop.state(), record.used_during is not None),
        used_site=(used.filename, used.lineno) if used else None,
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
