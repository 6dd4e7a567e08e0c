"""Connections held open: checked before each statement, transaction and cursor fetch.

The pool guard (``_sqlalchemy``) checks the loop when a connection is checked out.  A
connection that stays checked out (an ``AsyncConnection`` kept open, an ``AsyncSession`` in a
transaction, a fixture yielding either, a ``stream()`` being consumed) never passes a checkout
again, so its later uses are checked here, before any I/O, as LG101 with the facts of the
connection: the test that checked it out, where it was first opened, its loop.

Where each check sits, and why there:
- asyncpg checks every operation itself (``Connection._check_open``, the prepared statements'
  methods that reach the server, ``_check_conn_validity`` of transactions and cursors): the
  asyncpg guard already pays for that check, and on a mismatch of a connection SQLAlchemy's
  pool holds it hands the report to ``on_driver_mismatch`` here.  Nothing is added to
  asyncpg's statements.
- Every statement of every other driver passes ``DefaultExecutionContext.pre_exec()``: one
  plain method, the same in SQLAlchemy 1.4, 2.0 and 2.1, which ``Connection._execute_context``
  calls after building the statement's context and before executing it (psycopg's and
  aiosqlite's contexts inherit it; asyncpg's overrides it, and asyncpg checks itself).  It
  returns before the statement's I/O: a wrapper that stayed on the stack would be copied at
  every greenlet switch of the statement (measured: ~4k instructions per statement for a
  wrapper of ``_execute_context``).  The cursor is made before it, without I/O (psycopg's is
  a local object; aiosqlite's is made in aiosqlite's own thread, which binds no loop).
  (Earlier points, such as ``_ConnectionFairy.cursor()``, are inside SQLAlchemy's error
  handling, which would hand the user a ``StatementError`` wrapping the
  ``LoopMismatchError``.)
- Transactions: ``Transaction.commit()`` / ``rollback()``, before SQLAlchemy changes the
  transaction's state (a failed commit would otherwise leave it waiting for a rollback), and
  ``Connection._rollback_impl`` for the rollback of ``close()``.  Begin is implicit (the
  first statement); savepoints are statements.
- A server-side cursor (``stream()``) fetches through the adapter's own cursor class, which
  differs by version: ``AsyncAdapt_dbapi_ss_cursor`` (2.1, every driver), the psycopg and
  aiosqlite ones (2.0, 1.4).  ``StreamCursors`` patches the methods each class defines itself,
  when its module is imported.

The hot path of each hook is a dict lookup (the record's or driver connection's facts), one
weak reference call and ``current_loop``'s fast path, inline in the hook (no other Python
call; see ``_loops.current_loop``).  Statements of asyncpg's connections are skipped after
the lookup (no ``owner``: asyncpg checks them); their transactions' ends are checked here
too (see ``end``).

What the modes do with a held connection used on another loop:
- raise: ``LoopMismatchError`` before any I/O; the connection is untouched and stays checked
  out, usable by its own loop (which may close it as usual).
- warn: ``LoopMismatchWarning``, then the connection is closed without I/O on its loop (its
  socket directly) and dropped from its pool record; the call goes on and the driver fails as
  for a connection the server closed, so SQLAlchemy's usual invalidation follows: the caller
  gets SQLAlchemy's ``DBAPIError`` for it ("connection is closed"), with
  ``connection_invalidated`` set; after ``rollback()`` the ``AsyncConnection`` or
  ``AsyncSession`` gets a new connection, on the loop that uses it.  A connection whose loop
  runs in another thread is left alone (only that thread may touch it): the warning, then the
  call goes ahead.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Callable, Optional

from .. import _context, _loops
from .._causes import likely_cause
from .._context import describe_fixture
from .._emit import raise_record, warn_record
from .._loops import loop_id, running_loop
from .._record import Record
from .._state import STATE
from . import _sqlalchemy_pool as pools
from ._base import Integration, Patch
from ._sqlalchemy import MIN_VERSION
from ._sqlalchemy_facts import (
    CONNECTIONS,
    DRIVERS,
    ConnectionFacts,
    _adopt_connection,
    _driver_loop,
    _pool_record,
)

RESOURCE = "SQLAlchemy connection"

_connection_lookup = CONNECTIONS.lookup
_driver_lookup = DRIVERS.lookup


# -- the slow path: a held connection used on another loop ---------------------------------


def _held_record(conn: ConnectionFacts, loop: Any, action: str, operation: str) -> Record:
    record, used = _pool_record(conn.state, conn.binding, "LG101", action, loop)
    # Checkouts note their test only under pytest (``_do_get``): out of it, what a connection
    # holds is from an earlier pytest run in this process, not from its latest checkout.
    in_pytest = _context.in_pytest
    checked_out_by = conn.checked_out_by if in_pytest else None
    if checked_out_by is not None:
        # A fixture holds the connection (``async with engine.connect() as conn: yield
        # conn``): that fixture is where it comes from, not the engine's.
        record = record.replace(created_by=describe_fixture(*checked_out_by))
    return record.replace(
        resource=RESOURCE,
        operation=operation,
        checked_out_during=conn.checked_out_during if in_pytest else None,
        cause=likely_cause(conn.binding.loop.state(), record.used_during is not None),
        used_site=(used.filename, used.lineno) if used else None,
    )


_CLEANUP_FRAMES = 40


def _in_pool_cleanup() -> bool:
    """SQLAlchemy is giving the connection back (``_finalize_fairy``: a checkin, or the garbage
    collector's cleanup of a connection never given back).  Raising there would only be
    logged by SQLAlchemy (or, in a finalizer, ignored), so that is left to SQLAlchemy and to
    the pool guard, which closes a connection of a closed loop without it."""
    frame: Optional[FrameType] = sys._getframe(2)
    for _ in range(_CLEANUP_FRAMES):
        if frame is None:
            return False
        if frame.f_code.co_name == "_finalize_fairy":
            return True
        frame = frame.f_back
    return False


def _on_mismatch(conn: ConnectionFacts, loop: Any, operation: str) -> bool:
    """Report a held connection used on ``loop``; False when the facts are stale (the record
    holds another connection now: that one is adopted for the loop it belongs to) or when
    SQLAlchemy is cleaning the connection up."""
    __tracebackhide__ = True
    if STATE.mode is None or _in_pool_cleanup():
        return False
    record = conn.record()
    if record is None or record.dbapi_connection is None:
        return False  # released or invalidated already: SQLAlchemy's own path follows
    if not conn.holds(record):
        pool = getattr(record, "_ConnectionRecord__pool", None)  # the record's own pool
        _adopt_connection(pool, conn.state, record, _driver_loop(record.dbapi_connection) or loop)
        return False
    if STATE.mode == "raise":
        raise raise_record(_held_record(conn, loop, "raised", operation))
    if conn.binding.loop.state() == "running":
        # Its loop runs in another thread, which alone may touch its connection: warned
        # (once per pool and loop), then the call goes ahead.
        number = loop_id(loop)
        if conn.state.warned_loop != number:
            conn.state.warned_loop = number
            warn_record(_held_record(conn, loop, "warned", operation))
        return True
    closed = pools.release_record(
        None, record, count_overflow=False, loop_number=conn.binding.loop.id
    )
    warn_record(
        _held_record(conn, loop, "warned", operation).replace(
            released=1, sockets_closed=int(closed)
        )
    )
    return True


def on_driver_mismatch(driver_connection: Any, loop: Any, operation: str) -> bool:
    """asyncpg's own check found ``driver_connection`` on a foreign loop while SQLAlchemy was
    using it: True when it is a connection SQLAlchemy's pool holds (reported here as LG101,
    or raised), False to leave it to asyncpg."""
    __tracebackhide__ = True
    conn = _driver_lookup(id(driver_connection))
    if conn is None:
        return False
    record = conn.record()
    if record is None or getattr(record.dbapi_connection, "driver_connection", None) is not (
        driver_connection
    ):
        return False  # no longer pooled (released, invalidated): asyncpg's own error follows
    return _on_mismatch(conn, loop, operation)


def _is_no_op(function: Callable[..., Any]) -> bool:
    """``function``'s body is ``pass`` (a docstring at most): calling it does nothing."""
    code = getattr(function, "__code__", None)
    return code is not None and code.co_code == _no_op.__code__.co_code


def _no_op(self: Any) -> None:
    pass


# -- the hooks ---------------------------------------------------------------------------


def _make_pre_exec(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``DefaultExecutionContext.pre_exec()``: every statement, before the driver sees it.

    The hot path is one dict lookup, one weak reference call and ``current_loop``'s fast
    path, inline; SQLAlchemy's own ``pre_exec`` (``pass``) is not called."""

    def pre_exec(self: Any) -> Any:
        __tracebackhide__ = True
        try:
            conn = _connection_lookup(id(self._dbapi_connection._connection_record))
        except AttributeError:  # SQLAlchemy 1.4's first connect: the raw DBAPI connection
            return original(self)
        if conn is not None:
            owner_ref = conn.owner
            if owner_ref is not None:
                owner = owner_ref()
                if getattr(owner, "_thread_id", None) != _loops._thread_ident():
                    loop = running_loop()  # current_loop(owner) inline: not running here
                    if loop is not owner and loop is not None:
                        _on_mismatch(conn, loop, "statement")
        return original(self)

    def pre_exec_of_no_op(self: Any) -> None:
        __tracebackhide__ = True
        try:
            conn = _connection_lookup(id(self._dbapi_connection._connection_record))
        except AttributeError:  # SQLAlchemy 1.4's first connect: the raw DBAPI connection
            return
        if conn is not None:
            owner_ref = conn.owner
            if owner_ref is not None:
                owner = owner_ref()
                if getattr(owner, "_thread_id", None) != _loops._thread_ident():
                    loop = running_loop()  # current_loop(owner) inline: not running here
                    if loop is not owner and loop is not None:
                        _on_mismatch(conn, loop, "statement")

    # SQLAlchemy's is ``pass`` in every supported version: one Python call fewer per
    # statement.  (A version with a body gets it called.)
    return pre_exec_of_no_op if _is_no_op(original) else pre_exec


def _make_transaction_end(
    operation: str, of_transaction: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``Transaction.commit()`` / ``rollback()`` (``self.connection`` is the Connection) and
    ``Connection._rollback_impl`` (``self`` is; ``of_transaction=False``): the end of a
    transaction.  (``Connection.connection`` is a property that revalidates: never read.)"""

    def make(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        # No *args/**kwargs: the wrapper stays on the stack during the I/O, and a call that
        # unpacks arguments adds C frames that each greenlet switch would copy.
        def end(self: Any) -> Any:
            __tracebackhide__ = True
            fairy = (self.connection if of_transaction else self)._dbapi_connection
            if fairy is not None:
                try:
                    record = fairy._connection_record  # (getattr() with a default: ~300 more)
                except AttributeError:  # SQLAlchemy 1.4's first connect: the raw connection
                    return original(self)
                conn = _connection_lookup(id(record))
                if conn is not None:
                    # asyncpg's too: its own check would come after SQLAlchemy changed the
                    # transaction's state, and a failed commit would leave the connection
                    # waiting for a rollback (a failed rollback: its transaction forgotten
                    # by the adapter, still open in asyncpg and on the server).
                    owner = conn.loop()
                    if getattr(owner, "_thread_id", None) != _loops._thread_ident():
                        loop = running_loop()  # current_loop(owner) inline
                        if loop is not owner and loop is not None:
                            _on_mismatch(conn, loop, operation)
            return original(self)

        return end

    return make


def _driver_of_cursor(cursor: Any) -> Any:
    """The driver connection under an adapter's cursor: ``_connection`` (2.1's cursors,
    aiosqlite's), else the driver cursor's ``connection`` (psycopg's in 2.0)."""
    driver = getattr(cursor, "_connection", None)
    if driver is None:
        driver = getattr(getattr(cursor, "_cursor", None), "connection", None)
    return driver


def _check_cursor(cursor: Any) -> None:
    __tracebackhide__ = True
    conn = _driver_lookup(id(_driver_of_cursor(cursor)))
    if conn is not None:
        owner_ref = conn.owner
        if owner_ref is not None:
            owner = owner_ref()
            if getattr(owner, "_thread_id", None) != _loops._thread_ident():
                loop = running_loop()  # current_loop(owner) inline
                if loop is not owner and loop is not None:
                    _on_mismatch(conn, loop, "stream fetch")


_DEFAULT = object()


def _make_fetch(original: Callable[..., Any]) -> Callable[..., Any]:
    """A server-side cursor's ``fetchone``/``fetchall``/``__iter__`` (``stream()``): each
    may read from the server.  (Exact arguments: see ``_make_transaction_end``.)"""

    def fetch(self: Any) -> Any:
        __tracebackhide__ = True
        _check_cursor(self)
        return original(self)

    return fetch


def _make_fetchmany(original: Callable[..., Any]) -> Callable[..., Any]:
    """``fetchmany(size)``, its default left to the class (None or 0, by version)."""

    def fetchmany(self: Any, size: Any = _DEFAULT) -> Any:
        __tracebackhide__ = True
        _check_cursor(self)
        return original(self) if size is _DEFAULT else original(self, size)

    return fetchmany


class SQLAlchemyHeldIntegration(Integration):
    """Part of the SQLAlchemy guard (enabled with it, not listed on its own)."""

    name = "sqlalchemy-held"
    module = "sqlalchemy.ext.asyncio"
    min_version = MIN_VERSION
    label = "SQLAlchemy"
    requirement = "sqlalchemy[asyncio]"
    core = True  # listed as "sqlalchemy"
    patches = (
        Patch("sqlalchemy.engine.default:DefaultExecutionContext", "pre_exec", _make_pre_exec),
        Patch("sqlalchemy.engine.base:Transaction", "commit", _make_transaction_end("commit")),
        Patch("sqlalchemy.engine.base:Transaction", "rollback", _make_transaction_end("rollback")),
        Patch(
            "sqlalchemy.engine.base:Connection",
            "_rollback_impl",
            _make_transaction_end("rollback", of_transaction=False),
        ),
    )


# -- server-side cursors, per adapter module ----------------------------------------------

_FETCHES = ("fetchone", "fetchmany", "fetchall", "__iter__")


class StreamCursors(Integration):
    """The fetch methods of one module's server-side cursor classes, patched where a class
    defines them itself (a subclass that inherits them is covered by its base's patch).  The
    table is read when the module is imported: it differs between SQLAlchemy versions."""

    module = ""
    cursor_classes: tuple[str, ...] = ()
    min_version = MIN_VERSION
    label = "SQLAlchemy"
    requirement = "sqlalchemy[asyncio]"
    core = True

    def check(self, module: Any) -> None:
        found: list[Patch] = []
        for class_name in self.cursor_classes:
            cls = getattr(module, class_name, None)
            if cls is None:
                continue
            found.extend(
                Patch(
                    f"{self.module}:{class_name}",
                    fetch,
                    _make_fetchmany if fetch == "fetchmany" else _make_fetch,
                )
                for fetch in _FETCHES
                if fetch in vars(cls)
            )
        self.patches = tuple(found)  # type: ignore[misc]  # decided at import
        super().check(module)


class DbapiStreamCursors(StreamCursors):
    name = "sqlalchemy-streams"
    module = "sqlalchemy.connectors.asyncio"  # 2.0.2x+: the base of 2.1's adapters
    cursor_classes = ("AsyncAdapt_dbapi_ss_cursor",)


class PsycopgStreamCursors(StreamCursors):
    name = "sqlalchemy-psycopg-streams"
    module = "sqlalchemy.dialects.postgresql.psycopg"
    cursor_classes = ("AsyncAdapt_psycopg_ss_cursor",)


class AiosqliteStreamCursors(StreamCursors):
    name = "sqlalchemy-aiosqlite-streams"
    module = "sqlalchemy.dialects.sqlite.aiosqlite"
    cursor_classes = ("AsyncAdapt_aiosqlite_ss_cursor",)
