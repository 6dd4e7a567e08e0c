"""Raw asyncpg: a ``Pool`` belongs to the loop it captured at ``create_pool()`` (``Pool._loop``),
a ``Connection`` to the loop it was opened on (``Connection._loop``).

asyncpg's protocol is Cython and it has no event API, so these are class-attribute patches,
each undone exactly by ``uninstall()``:

- ``Pool.__init__``: the creation site.  A pool created with no running loop and no ``loop=``
  captured whatever ``asyncio.get_event_loop()`` returned, which may be the loop the program
  then runs (``set_event_loop(loop)``, ``loop.run_until_complete(create_pool(...))``) or not:
  only its first use can tell.
- ``Pool._async__init__`` (``await pool``, ``async with pool``): every pool's first use, checked
  like the calls below (LG103).  A pool created with no running loop is also warned about here
  if this first use is on a loop other than the one it captured (LG102, pointing at the
  ``create_pool()`` line).
- ``Pool._check_init`` when ``Pool._acquire`` (``acquire()`` and every
  ``Pool.fetch*``/``execute``/``copy*``) or ``Pool.release`` calls it, ``Pool.close``: the
  running loop must be ``pool._loop``; checked before any I/O (LG103).  ``Pool.terminate`` only
  forgets.  (``_check_init`` is the plain method both coroutines call first, before any I/O:
  wrapping it costs a function call where wrapping the coroutines cost a second coroutine
  around each, ~3.3k instructions apiece.)
- ``Connection.__init__``: the creation site of connections opened directly (not by a Pool, not
  by SQLAlchemy, whose objects have creation sites of their own).
- ``Connection._check_open`` (execute, fetch*, prepare, cursor, transaction, reset, codecs,
  listeners), the ``PreparedStatement`` methods that reach the server (cursor, explain, fetch*,
  executemany: checked after asyncpg's own checks of the statement and connection; its reads,
  ``get_attributes()``, ``get_statusmsg()``..., are not patched), ``_check_conn_validity`` of
  ``Transaction``, ``CursorFactory`` and ``BaseCursor`` (their every caller does I/O),
  ``Connection._copy_out``/``_copy_in`` (the copy methods), ``Connection.close``: the running
  loop must be ``conn._loop`` (LG103).  ``PoolConnectionProxy`` calls methods through the class,
  so acquired connections are covered too.

Calls made by SQLAlchemy's asyncpg dialect on a connection its pool holds are reported as the
SQLAlchemy guard reports them (LG101, ``_sqlalchemy_held``): a connection held open (an
``AsyncConnection``, an ``AsyncSession`` in a transaction, a stream) and used on another loop
is stopped here, by the check asyncpg's calls pay already.  Closing is left to SQLAlchemy's
cleanup.  Raw use of such a connection (``driver_connection``) is checked as LG103.

The hot path is one loop check and an identity compare; everything else runs only when the
loops differ.  The per-statement wrappers (``_check_open``, the statement methods,
``_check_conn_validity``, ``_check_init``) have ``_loops.current_loop``'s fast path inline (its
docstring says how): a Python call fewer per check.  ``warn`` mode reports (record and
``LoopMismatchWarning``, once per object and loop) and lets the call go ahead unchanged: an
asyncpg pool or connection cannot be moved to another loop, so asyncpg's own error follows,
as it would without loopguard.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Callable

from .. import _context, _loops, _release, _sites
from .._emit import raise_record, warn_record
from .._loops import (
    current_loop,
    inherited,
    loop_id,
    on_fork_in_child,
    remove_fork_listener,
    running_loop,
)
from .._record import Record
from .._registry import Origin, Tracked
from .._state import STATE
from . import _asyncpg_facts as facts
from . import _sqlalchemy_held
from ._asyncpg_facts import (
    CONNECTIONS,
    ORIGIN_POOL,
    POOLS,
    RESOURCE_CONNECTION,
    RESOURCE_POOL,
    ConnectionFacts,
    PoolFacts,
)
from ._base import Integration, Patch

MIN_VERSION = (0, 27)
# PreparedStatement's methods that reach the server, each checked itself.  Its other guarded
# methods only read local state (get_name, get_query, get_statusmsg, get_parameters,
# get_attributes): no I/O, so no loop is involved, and unpatched they cost nothing (SQLAlchemy
# reads two of them per statement).  fetchmany() is newer than asyncpg 0.27.
_STATEMENT_IO_METHODS = ("cursor", "explain", "fetch", "fetchval", "fetchrow", "executemany")
_STATEMENT_IO_METHODS_NEWER = ("fetchmany",)
# The other ConnectionResource classes: every method that calls _check_conn_validity does I/O
# (Transaction.start/commit/rollback/__aexit__, the cursors'), so it is checked there.
_RESOURCE_CLASSES = (
    "asyncpg.transaction:Transaction",
    "asyncpg.cursor:CursorFactory",
    "asyncpg.cursor:BaseCursor",
)
# The Pool coroutines whose call to _check_init() is checked, and the operation they are.
# (close() has a wrapper of its own; terminate() does no I/O on the loop and is not checked.)
_CHECKED_INIT_CALLERS = {"_acquire": "Pool.acquire", "release": "Pool.release"}


def _report(make: Callable[[str], Record], tracked: Tracked, loop: Any) -> None:
    """raise: raise at once; warn: one warning per object and loop, then carry on."""
    __tracebackhide__ = True
    if STATE.mode == "raise":
        raise raise_record(make("raised"))
    number = loop_id(loop)
    if tracked.warned_loop == number:
        return
    tracked.warned_loop = number
    warn_record(make("warned"))


def _pool_record_maker(
    pool: Any, pool_facts: PoolFacts, resource: str, owner_loop: Any, loop: Any, operation: str
) -> Callable[[str], Record]:
    """The record of a misuse of ``pool``, or of a connection acquired from it."""

    def make(action: str) -> Record:
        return facts.mismatch_record(
            resource=resource,
            owner_loop=owner_loop,
            loop=loop,
            action=action,
            operation=operation,
            url=facts.pool_url(pool),
            pool_class=type(pool).__name__,
            facts=pool_facts,
            implicit_loop=pool_facts.implicit_loop,
            opened_by=ORIGIN_POOL,
        )

    return make


def _on_pool_mismatch(pool: Any, loop: Any, operation: str) -> None:
    __tracebackhide__ = True
    if STATE.mode is None:
        return
    pool_facts = facts.pool_facts(pool)
    make = _pool_record_maker(pool, pool_facts, RESOURCE_POOL, pool._loop, loop, operation)
    _report(make, pool_facts, loop)


def _on_connection_mismatch(conn: Any, loop: Any, operation: str, caller: FrameType) -> None:
    __tracebackhide__ = True
    if STATE.mode is None:
        return
    if facts.called_by_sqlalchemy(caller):
        # A connection SQLAlchemy's pool holds, used by SQLAlchemy on another loop: LG101
        # with the engine's facts (closing it is SQLAlchemy's cleanup: left to it).
        if operation != "Connection.close":
            _sqlalchemy_held.on_driver_mismatch(conn, loop, operation)
        return
    pool = facts.pool_of(conn)
    if pool is not None:  # one warning per pool and loop, whichever member is used
        pool_facts = facts.pool_facts(pool)
        make = _pool_record_maker(
            pool, pool_facts, RESOURCE_CONNECTION, conn._loop, loop, operation
        )
        _report(make, pool_facts, loop)
        return
    conn_facts = facts.connection_facts(conn)

    def make_connection_record(action: str) -> Record:
        return facts.mismatch_record(
            resource=RESOURCE_CONNECTION,
            owner_loop=conn._loop,
            loop=loop,
            action=action,
            operation=operation,
            url=facts.connection_url(conn),
            pool_class=None,
            facts=conn_facts,
            implicit_loop=False,
            opened_by=conn_facts.opened_by,
        )

    _report(make_connection_record, conn_facts, loop)


# -- wrappers -----------------------------------------------------------------------------


def _make_pool_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        loop_id(self._loop)  # number loops in the order they are bound
        running = running_loop()
        implicit = running is None and kwargs.get("loop") is None
        site = _sites.user_site(_context.rootdir, skip=2)
        origin = Origin(site, _context.current_test(), running is not None)
        POOLS.add(self, PoolFacts(origin, implicit), facts.anchor_of(self))

    return __init__


def _pool_in_use(pool: Any, *args: Any, **kwargs: Any) -> bool:
    # A closed or closing pool raises asyncpg's own "pool is closed/closing", with no I/O.
    return not (pool._closed or getattr(pool, "_closing", False))


def _make_pool_async_init(original: Callable[..., Any]) -> Callable[..., Any]:
    """``await pool`` / ``async with pool``, the first use of every pool: the running loop
    must be ``pool._loop`` (LG103); for a pool created with no loop running, this first use
    also decides LG102: warned only when it is not on the loop the pool captured."""

    async def _async__init__(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        own = self._loop
        loop = current_loop(own)
        foreign = loop is not own and loop is not None
        pool_facts = POOLS.get(self)
        if pool_facts is not None and pool_facts.first_use_pending:
            pool_facts.first_use_pending = False
            if not foreign:  # used on the loop it captured: that was the right one
                pool_facts.implicit_loop = False
            elif _pool_in_use(self):
                warn_record(facts.outside_loop_record(self, pool_facts, loop), stacklevel=4)
        if foreign and _pool_in_use(self):
            _on_pool_mismatch(self, loop, facts.pool_operation(sys._getframe(1), "Pool.__await__"))
        return await original(self, *args, **kwargs)

    return _async__init__


def _make_pool_check_init(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``_acquire`` and ``release`` call ``_check_init()`` before any I/O, after asyncpg's own
    checks (pool closing, connection already released): the loop is checked there."""

    def _check_init(self: Any) -> Any:
        __tracebackhide__ = True
        result = original(self)  # not initialized or closed: asyncpg's own error, no I/O
        own = self._loop
        if getattr(own, "_thread_id", None) == _loops._thread_ident():
            return result  # current_loop(own) inline: its loop runs here
        loop = running_loop()
        if loop is not own and loop is not None:
            caller = sys._getframe(1)
            operation = _CHECKED_INIT_CALLERS.get(caller.f_code.co_name)
            if operation is not None and _pool_in_use(self):
                _on_pool_mismatch(self, loop, facts.pool_operation(caller, operation))
        return result

    return _check_init


def _make_pool_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def close(self: Any) -> Any:
        __tracebackhide__ = True
        own = self._loop
        loop = current_loop(own)
        if loop is not own and loop is not None and not self._closed:
            _on_pool_mismatch(self, loop, "Pool.close")
        try:
            return await original(self)
        finally:
            if self._closed:
                POOLS.discard(self)

    return close


def _make_pool_terminate(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def terminate(self: Any) -> Any:
        try:
            return original(self)
        finally:
            if self._closed:
                POOLS.discard(self)

    return terminate


def _make_connection_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        loop_id(self._loop)  # number loops in the order they are bound
        opened_by, site = facts.opener(sys._getframe(1))
        origin = Origin(site, _context.current_test(), True)
        CONNECTIONS.add(self, ConnectionFacts(origin, opened_by))

    return __init__


# The per-statement wrappers below take ``__tracebackhide__`` as a parameter with a default:
# pytest still hides their frames (it reads the frame's locals), and the fast path pays no
# store for it.  asyncpg never passes it.
def _make_check_open(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def _check_open(self: Any, __tracebackhide__: bool = True) -> Any:
        if getattr(self._loop, "_thread_id", None) == _loops._thread_ident():
            return original(self)  # current_loop(own) inline: its loop runs here
        return _check_open_off_thread(original, self, sys._getframe(1))

    return _check_open


def _check_open_off_thread(original: Callable[[Any], Any], conn: Any, caller: FrameType) -> Any:
    """``_check_open`` when the connection's loop does not run in this thread: asyncpg's own
    check first (closed: its InterfaceError, no I/O either way), then the loop's."""
    __tracebackhide__ = True
    result = original(conn)
    own = conn._loop
    loop = running_loop()
    if loop is not own and loop is not None:
        operation = f"Connection.{caller.f_code.co_name.lstrip('_')}"
        _on_connection_mismatch(conn, loop, operation, caller)
        if conn.is_closed():  # closed by warn mode: asyncpg's own "connection is closed"
            return original(conn)
    return result


def _make_check_conn_validity(original: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def _check_conn_validity(self: Any, meth_name: str, __tracebackhide__: bool = True) -> Any:
        if getattr(self._connection._loop, "_thread_id", None) == _loops._thread_ident():
            return original(self, meth_name)  # current_loop(own) inline: its loop runs here
        return _check_conn_validity_off_thread(original, self, meth_name, sys._getframe(1))

    return _check_conn_validity


def _check_conn_validity_off_thread(
    original: Callable[[Any, str], Any], resource: Any, meth_name: str, caller: FrameType
) -> Any:
    """``_check_conn_validity`` when the connection's loop does not run in this thread:
    asyncpg's own check first (released or closed: its error), then the loop's."""
    __tracebackhide__ = True
    result = original(resource, meth_name)
    conn = resource._connection
    own = conn._loop
    loop = running_loop()
    if loop is not own and loop is not None:
        operation = f"{type(resource).__name__}.{meth_name}"
        _on_connection_mismatch(conn, loop, operation, caller)
        if conn.is_closed():  # closed by warn mode: asyncpg's own error
            return original(resource, meth_name)
    return result


def _make_statement_method(name: str) -> Callable[[Any], Any]:
    """A PreparedStatement method that reaches the server: asyncpg's ``guarded`` wrapper of it
    checks the statement and its connection (``_check_conn_validity``), then calls it."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: Any, *args: Any, __tracebackhide__: bool = True, **kwargs: Any) -> Any:
            if getattr(self._connection._loop, "_thread_id", None) != _loops._thread_ident():
                _check_statement_loop(self, name, sys._getframe(1))  # current_loop() inline
            return original(self, *args, **kwargs)

        return method

    return make


def _check_statement_loop(stmt: Any, name: str, caller: FrameType) -> None:
    """Off the fast path: the loop check of ``stmt.<name>()``, after asyncpg's own checks
    (statement closed, connection released or closed: its error first, as before any loop
    check), before the call's I/O."""
    __tracebackhide__ = True
    conn = stmt._connection
    own = conn._loop
    loop = running_loop()
    if loop is not own and loop is not None:
        stmt._check_conn_validity(name)
        _on_connection_mismatch(conn, loop, f"{type(stmt).__name__}.{name}", caller)
        # Closed by warn mode: the call raises asyncpg's own "connection is closed".


def _make_connection_coroutine(name: str) -> Callable[[Any], Any]:
    """``close`` and the copy helpers: checked when awaited, before the original runs."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(
            self: Any, *args: Any, __tracebackhide__: bool = True, **kwargs: Any
        ) -> Any:
            if getattr(self._loop, "_thread_id", None) != _loops._thread_ident():
                _check_connection_coroutine(self, name, sys._getframe(1))  # current_loop inline
            return await original(self, *args, **kwargs)

        return guarded

    return make


def _check_connection_coroutine(conn: Any, name: str, caller: FrameType) -> None:
    """Off the fast path: the loop check of ``conn.close()`` or a copy helper."""
    __tracebackhide__ = True
    own = conn._loop
    loop = running_loop()
    if loop is not own and loop is not None and not conn.is_closed():
        # _copy_out/_copy_in: name the public copy_* method that called them.
        operation = "Connection." + (name if name == "close" else caller.f_code.co_name.lstrip("_"))
        _on_connection_mismatch(conn, loop, operation, caller)


def _keep_inherited_connections() -> None:
    """In a forked child: connections of the parent's loops are never collected here (their
    ``__del__`` would unregister the parent's sockets from the epoll set both share)."""
    for conn, _ in CONNECTIONS.live():
        if inherited(loop_id(conn._loop)):
            _release.keep_for_parent(conn)


class AsyncpgIntegration(Integration):
    name = "asyncpg"
    module = "asyncpg"
    min_version = MIN_VERSION
    requirement = "asyncpg"
    patches = (
        Patch("asyncpg.pool:Pool", "__init__", _make_pool_init),
        Patch("asyncpg.pool:Pool", "_async__init__", _make_pool_async_init),
        Patch("asyncpg.pool:Pool", "_check_init", _make_pool_check_init),
        Patch("asyncpg.pool:Pool", "close", _make_pool_close),
        Patch("asyncpg.pool:Pool", "terminate", _make_pool_terminate),
        Patch("asyncpg.connection:Connection", "__init__", _make_connection_init),
        Patch("asyncpg.connection:Connection", "_check_open", _make_check_open),
        Patch("asyncpg.connection:Connection", "close", _make_connection_coroutine("close")),
        Patch(
            "asyncpg.connection:Connection",
            "_copy_out",
            _make_connection_coroutine("_copy_out"),
            required=False,
        ),
        Patch(
            "asyncpg.connection:Connection",
            "_copy_in",
            _make_connection_coroutine("_copy_in"),
            required=False,
        ),
        *(
            Patch("asyncpg.prepared_stmt:PreparedStatement", name, _make_statement_method(name))
            for name in _STATEMENT_IO_METHODS
        ),
        *(
            Patch(
                "asyncpg.prepared_stmt:PreparedStatement",
                name,
                _make_statement_method(name),
                required=False,
            )
            for name in _STATEMENT_IO_METHODS_NEWER
        ),
        *(
            Patch(owner, "_check_conn_validity", _make_check_conn_validity)
            for owner in _RESOURCE_CLASSES
        ),
    )

    def setup(self) -> None:
        import asyncpg
        import asyncpg.pool

        facts.set_directories(asyncpg, asyncpg.pool)
        on_fork_in_child(_keep_inherited_connections)

    def teardown(self) -> None:
        remove_fork_listener(_keep_inherited_connections)
        POOLS.clear()
        CONNECTIONS.clear()

    def __repr__(self) -> str:
        return f"<AsyncpgIntegration tracking {len(POOLS)} pools, {len(CONNECTIONS)} connections>"
