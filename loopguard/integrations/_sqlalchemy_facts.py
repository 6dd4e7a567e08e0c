"""What the SQLAlchemy guard knows about engines, pools and connections, and the records it
builds from that.

The facts live in registries of loopguard's own (``_registry``), keyed by ``id()`` of the pool,
the connection record or the driver connection: nothing is stored on SQLAlchemy's objects.
The patches that read and update them are in ``_sqlalchemy`` (checkouts, dispose, closes)
and ``_sqlalchemy_held`` (connections held open).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Optional

from .. import _context, _secrets, _sites
from .._causes import likely_cause
from .._loops import LoopRef, loop_id
from .._record import Record
from .._registry import Binding, Origin, Registry, Tracked

_fixtures_in_setup = _context.fixtures_in_setup  # the list itself: appended to, never rebound
_fixture_in_setup = _context.fixture_in_setup  # the innermost fixture whose setup is running

RESOURCE = "SQLAlchemy AsyncEngine"
POOL_RESOURCE = "SQLAlchemy pool"  # made by create_async_pool_from_url()


class EngineFacts(Origin):
    """Where an engine was created, and its URL: shared by the engine's successive pools."""

    __slots__ = ("_url", "_rendered", "pool_class", "resource")

    def __init__(
        self,
        url: Any,
        pool_class: str,
        site: Optional[_sites.Site],
        created_during: Optional[str],
        created_in_loop: Optional[bool],
        known: bool = True,
    ) -> None:
        # Built from the facts themselves, not from an Origin copied: one object per engine.
        super().__init__(site, created_during, created_in_loop, known)
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

    __slots__ = ("queued", "connections_on")
    origin: EngineFacts

    def __init__(self, origin: EngineFacts, queued: bool = True) -> None:
        super().__init__(origin)
        self.queued = queued
        # The weak reference to the one loop every connection adopted for this pool belongs
        # to (None: none adopted; ``_several_loops``: more than one): dispose() looks for
        # connections of another loop (LG104) only when some may be there.
        self.connections_on: Optional[Callable[[], Any]] = None


def _several_loops() -> Any:
    """``PoolState.connections_on`` of a pool with connections of several loops: it returns
    no loop (itself), so every dispose() looks."""
    return _several_loops


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
        self,
        binding: Binding,
        dbapi_id: int,
        started: Any,
        state: PoolState,
        record: Any,
        checked_out_by: Optional[tuple[Any, Any]],
    ) -> None:
        self.binding = binding
        self.dbapi_id = dbapi_id
        self.started = started
        self.state = state
        self.record = weakref.ref(record)
        self.loop: Callable[[], Any] = binding.loop._ref  # the loop's weak reference
        self.owner: Optional[Callable[[], Any]] = None  # the same, where statements are checked
        self.checked_out_during = binding.during  # adopted at a checkout (or a use)
        # The pytest fixture whose setup checked it out, as _context.fixtures_in_setup holds
        # it (described only in a record): the fixture a held connection comes from.
        self.checked_out_by = checked_out_by

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
_connection_lookup = CONNECTIONS.lookup


class _PendingPool(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a pool ``recreate()`` made (``dispose()``) and not used yet, with
    the facts it is tracked with at its first checkout: a disposed engine is usually
    discarded unused, and its new pool need not be tracked until then.  Built by weakref's C
    constructor, then given its facts (no Python ``__init__``)."""

    __slots__ = ("origin", "queued")
    origin: EngineFacts
    queued: bool


# id(pool) -> its _PendingPool.  Each reference's callback is this dict's own ``pop`` with
# the pool's id (a C call): the entry goes while the pool is being freed, before its id can
# be reused; a reference removed from here dies with its callback unrun.
_pending: dict[int, _PendingPool] = {}
pending_lookup = _pending.get  # pending_lookup(id(pool)): a dict get, no Python call


def track_later(pool: Any, origin: EngineFacts, queued: bool) -> None:
    """``pool`` is tracked with these facts if it is ever checked out from (or wrapped)."""
    key = id(pool)
    try:
        pending = _PendingPool(pool, functools.partial(_pending.pop, key))
    except TypeError:  # a pool class without weak references: tracked now
        POOLS.add(pool, PoolState(origin, queued))
        return
    pending.origin = origin
    pending.queued = queued
    _pending[key] = pending


def track_pending(pool: Any) -> Optional[PoolState]:
    """Track a pool noted by ``track_later`` (its first use); None if it was not noted."""
    key = id(pool)
    pending = _pending.get(key)
    if pending is None or pending() is not pool:
        return None
    # Tracked before it leaves the table: a checkout in another thread meanwhile finds one
    # or the other, never neither.
    state = POOLS.lookup(key) or POOLS.add(pool, PoolState(pending.origin, pending.queued))
    _pending.pop(key, None)  # its reference dies with its callback unrun
    return state


def forget_pending() -> None:
    _pending.clear()


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


def _driver_loop(dbapi_connection: Any) -> Any:
    """The loop the driver connection is bound to (asyncpg: ``Connection._loop``), or None."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    return getattr(driver, "_loop", None)


def _adopt_connection(pool: Any, state: PoolState, record: Any, running: Any) -> ConnectionFacts:
    """A connection seen for the first time: it belongs to its driver connection's loop
    (asyncpg: ``Connection._loop``), else to ``running``, the loop using it now."""
    dbapi_connection = record.dbapi_connection
    driver = getattr(dbapi_connection, "driver_connection", None)
    loop = getattr(driver, "_loop", None) or running
    site = _sites.user_site(_context.rootdir, skip=3)
    binding = Binding(LoopRef(loop), site, _context.current_test())
    facts = ConnectionFacts(
        binding,
        id(dbapi_connection),
        record.starttime,
        state,
        record,
        _fixture_in_setup() if _fixtures_in_setup else None,
    )
    if driver is not None and not (type(driver).__module__ or "").startswith("asyncpg"):
        # The other drivers are checked by loopguard's hooks in SQLAlchemy's adapters, which
        # find the facts by driver connection.  asyncpg checks every operation itself (the
        # asyncpg guard reports it as LG101, and hands a connection SQLAlchemy's pool holds
        # to ``_sqlalchemy_held.on_driver_mismatch``, which looks for it among the records).
        facts.owner = binding.loop._ref
        try:  # noqa: SIM105 (contextlib.suppress: three Python calls per connection)
            DRIVERS.add(driver, facts)
        except TypeError:  # a driver connection without weak references
            pass
    conn = CONNECTIONS.add(record, facts)
    connections_on = state.connections_on
    if connections_on is None:
        state.connections_on = binding.loop._ref
    elif connections_on() is not loop:
        state.connections_on = _several_loops
    if state.binding is None:
        _bind(pool, state, binding)
    return conn


def _facts_of_driver(driver_connection: Any) -> Optional[ConnectionFacts]:
    """The facts of the pooled connection whose driver connection is ``driver_connection``:
    from DRIVERS, else (asyncpg's, not kept there) from the records holding it now."""
    conn = DRIVERS.lookup(id(driver_connection))
    if conn is not None:
        return conn
    for record, conn in CONNECTIONS.live():  # only when a mismatch is being reported
        dbapi_connection = record.dbapi_connection
        if getattr(dbapi_connection, "driver_connection", None) is driver_connection:
            # Facts of an earlier connection of the record: this one is not adopted yet.
            return conn if conn.holds(record) else None
    return None


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
