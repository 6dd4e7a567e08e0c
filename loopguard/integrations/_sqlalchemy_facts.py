"""What the SQLAlchemy guard knows about engines, pools and connections, and the records it
builds from that.

The facts live in registries of loopguard's own (``_registry``), keyed by ``id()`` of the pool,
the connection record or the driver connection: nothing is stored on SQLAlchemy's objects.
The patches that read and update them are in ``_sqlalchemy`` (checkouts, dispose, closes)
and ``_sqlalchemy_held`` (connections held open).
"""

from __future__ import annotations

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
_connection_lookup = CONNECTIONS.lookup

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
        try:  # noqa: SIM105 (contextlib.suppress: three Python calls per connection)
            DRIVERS.add(driver, facts)
        except TypeError:  # a driver connection without weak references
            pass
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
