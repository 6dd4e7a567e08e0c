"""redis.asyncio: a connection belongs to the loop it connected on (its ``StreamReader`` and
``StreamWriter`` are that loop's); a client's pool belongs to the loop of its connections until
they are closed (``await client.aclose()``), after which it may serve another loop.

Where it hooks (class-attribute patches, each undone exactly by ``uninstall()``):

- ``ConnectionPool.__init__``: the creation site, the user's line that built the pool or the
  client around it (``Redis(...)``, ``from_url()``, ``Sentinel.master_for()``; a library's
  call is traced back to the user's call into that library).  Every pool class
  (``BlockingConnectionPool``, ``SentinelConnectionPool``) goes through it.
- ``ConnectionPool.ensure_connection``: every checkout (``get_connection()``: each command of a
  client, each pipeline, a pubsub's first connection) calls it with the connection it took,
  before ``connect()``, the readiness check or any other I/O.  A connected connection of
  another loop is a mismatch (LG110); an unconnected one is about to connect on this loop,
  which binds it.
- ``Redis.initialize``: the start of every command of a client; a ``single_connection_client``
  holds its connection outside the pool after its first command, and it is checked here.  A
  pooled client holds none: one attribute read, no loop check.
- ``PubSub.execute_command`` (subscribe, unsubscribe, ping) and ``PubSub.parse_response``
  (``get_message()``, ``listen()``): a pubsub holds its connection from its first
  subscription on.

Not guarded: ``RedisCluster`` (its nodes keep their connections outside any
``ConnectionPool``), a pipeline that holds its connection across loops while it WATCHes, a
``Monitor``, and connections used without a pool.

The wrappers are plain functions that check, then return the original coroutine for the caller
to await: no second coroutine around each call.  The hot path of a command is one loop check
(``_loops.current_loop``) against the connection's own loop and an identity compare.

raise mode: ``LoopMismatchError`` before any I/O; the connection stays as it was (a checkout
puts it back in the pool), so its own loop can go on using it.  warn mode: the record and a
``LoopMismatchWarning`` (once per pool, or connection, and loop); then, when the old loop is
closed or not running, the connections of that loop are dropped without I/O (their sockets
closed directly) and the call connects anew on the running loop: the client now belongs to it.
When the old loop is running (in another thread) or belongs to a parent process (fork), its
sockets cannot be touched from here: the call goes ahead and redis-py's own error may follow.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any, Callable, Optional

from .. import _context, _sites
from .._emit import raise_record, warn_record
from .._loops import LoopRef, current_loop, loop_id, running_loop
from .._record import Record
from .._registry import Binding, Origin
from .._state import STATE
from . import _redis_facts as facts
from ._base import Integration, Patch
from ._redis_facts import CONNECTIONS, POOLS, ConnectionFacts, PoolFacts

# 5.0.2: aclose() (5.0.1+), which the fixes name, and a BlockingConnectionPool that checks a
# connection outside its lock (5.0.1 holds it, so any error there, loopguard's included,
# deadlocks the pool's own release of that connection).
MIN_VERSION = (5, 0, 2)
_lookup_pool = POOLS.lookup
_lookup_connection = CONNECTIONS.lookup


def _returns_coroutine(wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """Keep ``inspect.iscoroutinefunction()`` true for a wrapper that returns the original's
    coroutine (Python 3.12+ can say so)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    return mark(wrapper) if mark is not None else wrapper


# -- binding: a connection's first I/O ------------------------------------------------------


def _bind(conn: Any, pool_facts: Optional[PoolFacts], skip: int) -> None:
    """``conn`` is about to connect on the running loop: remember where and when."""
    loop = running_loop()
    if loop is None or STATE.mode is None:
        return
    site = _sites.user_site(_context.rootdir, skip=skip)
    binding = Binding(LoopRef(loop), site, _context.current_test())
    if pool_facts is None:
        known = _lookup_connection(id(conn))
        pool_facts = known.pool if known is not None else None
    origin = pool_facts.origin if pool_facts is not None else facts.UNKNOWN_ORIGIN
    CONNECTIONS.add(conn, ConnectionFacts(origin, binding, pool_facts))


def _pool_facts(pool: Any) -> PoolFacts:
    """The pool's facts; a pool created before install() gets an entry without a site."""
    known = _lookup_pool(id(pool))
    if known is None:
        known = POOLS.add(pool, PoolFacts(facts.UNKNOWN_ORIGIN, type(pool).__name__))
    known.url_of(pool)
    return known


# -- mismatches ----------------------------------------------------------------------------


def _first_report(tracked: Any, loop: Any) -> bool:
    """warn mode says it once per object and loop."""
    number = loop_id(loop)
    if tracked.warned_loop == number:
        return False
    tracked.warned_loop = number
    return True


def _on_pool_mismatch(pool: Any, conn: Any, owner_loop: Any, loop: Any) -> None:
    """A checkout on ``loop`` took ``conn``, connected on ``owner_loop``."""
    __tracebackhide__ = True
    if STATE.mode is None or not isinstance(owner_loop, asyncio.AbstractEventLoop):
        return  # (a test double's "stream" has no loop of its own)
    pool_facts = _pool_facts(pool)
    owner = LoopRef(owner_loop)
    operation = facts.command_name(sys._getframe(2)) or "ConnectionPool.get_connection"

    def record(action: str) -> Record:
        return facts.mismatch_record(
            conn=conn,
            conn_facts=_lookup_connection(id(conn)),
            pool_facts=pool_facts,
            owner=owner,
            loop=loop,
            action=action,
            operation=operation,
            skip=4,
        )

    if STATE.mode == "raise":
        raise raise_record(record("raised"))
    report = record("warned") if _first_report(pool_facts, loop) else None  # before the heal
    if facts.can_heal(owner):
        dropped, closed = facts.drop_idle(pool, owner_loop)
        closed += facts.drop_without_io(conn)
        pool_facts.heals += 1
        _bind(conn, pool_facts, skip=3)  # it connects anew, on this loop
        if report is not None:
            report = report.replace(released=dropped + 1, sockets_closed=closed)
    if report is not None:
        warn_record(report)


def _on_connection_mismatch(conn: Any, owner_loop: Any, loop: Any, operation: str) -> None:
    """``conn``, connected on ``owner_loop``, is used on ``loop`` without a checkout (held by
    a single-connection client or a pubsub)."""
    __tracebackhide__ = True
    if STATE.mode is None or not isinstance(owner_loop, asyncio.AbstractEventLoop):
        return  # (a test double's "stream" has no loop of its own)
    conn_facts = _lookup_connection(id(conn))
    pool_facts = conn_facts.pool if conn_facts is not None else None
    owner = LoopRef(owner_loop)

    def record(action: str) -> Record:
        return facts.mismatch_record(
            conn=conn,
            conn_facts=conn_facts,
            pool_facts=pool_facts,
            owner=owner,
            loop=loop,
            action=action,
            operation=operation,
            skip=5,
        )

    if STATE.mode == "raise":
        raise raise_record(record("raised"))
    # One warning per pool and loop, whichever of its connections is used; per connection
    # for those of no tracked pool.
    if conn_facts is None:
        conn_facts = CONNECTIONS.add(
            conn, ConnectionFacts(facts.UNKNOWN_ORIGIN, Binding(owner, None, None), None)
        )
    warned: Any = pool_facts if pool_facts is not None else conn_facts
    report = record("warned") if _first_report(warned, loop) else None
    if facts.can_heal(owner):
        closed = facts.drop_without_io(conn)
        warned.heals += 1
        _bind(conn, pool_facts, skip=3)  # it connects anew, on this loop
        if report is not None:
            report = report.replace(released=1, sockets_closed=int(closed))
    if report is not None:
        warn_record(report)


# -- wrappers -----------------------------------------------------------------------------


def _make_pool_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if STATE.mode is None:
            return
        site = facts.creation_site(self)
        origin = Origin(site, _context.current_test(), running_loop() is not None)
        POOLS.add(self, PoolFacts(origin, type(self).__name__))

    return __init__


def _make_ensure_connection(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def ensure_connection(self: Any, connection: Any) -> Any:
        __tracebackhide__ = True
        try:
            writer = connection._writer
        except AttributeError:  # not a redis-py connection (a test double): nothing to check
            return original(self, connection)
        if writer is not None:
            owner = writer._loop
            loop = current_loop(owner)
            if loop is not owner and loop is not None:
                _on_pool_mismatch(self, connection, owner, loop)
        else:  # it connects now, on this loop: its first I/O binds it
            pool_facts = _lookup_pool(id(self))
            if pool_facts is not None:
                pool_facts.url_of(self)
            _bind(connection, pool_facts, skip=2)
        return original(self, connection)

    return _returns_coroutine(ensure_connection)


def _check_held(conn: Any, operation: Callable[[], str]) -> None:
    """A connection held outside the pool (a single-connection client's, a pubsub's)."""
    __tracebackhide__ = True
    writer = getattr(conn, "_writer", None)  # (a test double may have none)
    if writer is not None:
        owner = writer._loop
        loop = current_loop(owner)
        if loop is not owner and loop is not None:
            _on_connection_mismatch(conn, owner, loop, operation())


def _make_initialize(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``Redis.initialize()`` starts every command of a client; a single-connection client
    holds its connection (``Redis.connection``) from its first command on.  A pooled client has
    none: one attribute read, no loop check (its checkout is checked)."""

    def initialize(self: Any) -> Any:
        __tracebackhide__ = True
        conn = self.connection
        if conn is not None:
            _check_held(conn, lambda: facts.command_name(sys._getframe(3)) or "Redis.initialize")
        return original(self)

    return _returns_coroutine(initialize)


def _make_pubsub_method(operation: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``PubSub.execute_command`` (subscribe, ping, ...) and ``PubSub.parse_response``
    (``get_message()``, ``listen()``): a pubsub holds its connection from its first
    subscription on."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            conn = self.connection
            if conn is not None:
                _check_held(conn, lambda: _pubsub_operation(operation, args))
            return original(self, *args, **kwargs)

        return _returns_coroutine(wrapper)

    return make


def _pubsub_operation(operation: str, args: tuple[Any, ...]) -> str:
    if operation == "PubSub.execute_command" and args and isinstance(args[0], (str, bytes)):
        name = args[0].decode() if isinstance(args[0], bytes) else args[0]
        return name.upper()
    return operation


class RedisIntegration(Integration):
    name = "redis"
    module = "redis.asyncio"
    min_version = MIN_VERSION
    label = "redis-py"
    requirement = "redis"
    patches = (
        Patch("redis.asyncio.connection:ConnectionPool", "__init__", _make_pool_init),
        Patch(
            "redis.asyncio.connection:ConnectionPool", "ensure_connection", _make_ensure_connection
        ),
        Patch("redis.asyncio.client:Redis", "initialize", _make_initialize),
        Patch(
            "redis.asyncio.client:PubSub",
            "execute_command",
            _make_pubsub_method("PubSub.execute_command"),
        ),
        Patch(
            "redis.asyncio.client:PubSub",
            "parse_response",
            _make_pubsub_method("PubSub.get_message"),
        ),
    )

    def setup(self) -> None:
        import redis
        from redis.asyncio.client import Redis
        from redis.asyncio.connection import ConnectionPool

        facts.set_directory(redis)
        facts.set_client_classes(Redis, ConnectionPool)

    def teardown(self) -> None:
        POOLS.clear()
        CONNECTIONS.clear()

    def __repr__(self) -> str:
        return f"<RedisIntegration tracking {len(POOLS)} pools, {len(CONNECTIONS)} connections>"
