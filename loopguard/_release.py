"""Closing a driver connection's socket without running the event loop it belongs to.

Used when loopguard heals a pool (``warn`` mode): the stale connection's loop may be closed
(``transport.abort()`` would then raise "Event loop is closed" and leak the socket) or idle
(a graceful close would be I/O on a loop that is not running).  So the socket is closed
directly and the transport and driver are marked closed, which keeps them from warning
about an unclosed transport or connection when they are collected.  Drivers known: asyncpg,
psycopg 3, aiomysql and asyncmy (SQLAlchemy's async dialects for PostgreSQL and MySQL).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from ._loops import inherited, loop_id

# Connections of loops inherited through fork(): their sockets and the loop's epoll set are
# shared with the parent, where they are still in use.  Closing them here, or letting the
# driver close them when they are collected (asyncpg's __del__ unregisters the socket from
# the shared epoll set), would break the parent's connections: they are kept, untouched, for
# the life of this process.
_kept_for_parent: list[Any] = []


def _close_selector_transport(transport: Any) -> bool:
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return False
    loop = transport._loop
    fd = transport._sock_fd
    if not loop.is_closed():
        # Unregister from the idle loop's selector, so it never polls a closed descriptor.
        loop._remove_reader(fd)
        loop._remove_writer(fd)
    sock.close()
    transport._sock = None
    transport._closing = True
    # A later abort()/write() on this transport returns early instead of using the loop.
    transport._conn_lost += 1
    return True


def close_transport(transport: Any) -> bool:
    """Close an asyncio stream's transport without its loop (selector transports: the socket
    directly; uvloop's: an abort, which closes the handle without a round trip, when its loop
    is still open).  Only for a loop that is closed or not running.  True if a socket was
    closed here."""
    if hasattr(transport, "_sock"):
        return _close_selector_transport(transport)
    if transport.is_closing():
        return False
    try:
        transport.abort()
    except RuntimeError:  # its loop is closed: uvloop closed the socket itself then
        return False
    return True


def _running_elsewhere(loop: Any) -> bool:
    return bool(loop.is_running()) and loop is not asyncio._get_running_loop()


def _terminate_asyncpg_on_its_loop(connection: Any) -> None:
    # Run by the connection's own loop.  terminate() alone only aborts the transport, whose
    # socket closes one iteration later: a loop stopped and closed right after this callback
    # never gets there, and the socket is left to the garbage collector ("unclosed
    # transport").  So the socket is closed now, then terminate() does the driver's cleanup.
    _close_asyncpg(connection)
    connection.terminate()


def _close_asyncpg(connection: Any) -> bool:
    loop = connection._loop
    if _running_elsewhere(loop):
        # Its loop runs in another thread: only that thread may touch its selector.
        loop.call_soon_threadsafe(_terminate_asyncpg_on_its_loop, connection)
        return True
    transport = connection._transport
    if not hasattr(transport, "_sock"):  # not asyncio's selector transport: uvloop's
        if loop.is_closed():
            # uvloop closed the socket itself when its loop closed; only the driver's
            # bookkeeping is left, or it warns "unclosed connection" when collected.
            connection._aborted = True
            connection._protocol = None
        else:
            connection._abort()  # libuv closes the handle without a round trip
        return True
    closed = _close_selector_transport(transport)
    if closed:
        # Marks the connection aborted; protocol.abort() now finds the transport already lost.
        try:
            connection._abort()
        except RuntimeError:
            if not connection._loop.is_closed():
                raise
            # An operation was pending (its waiter is a future of the closed loop, which
            # cannot schedule its callbacks): the socket is closed already, so only mark
            # the connection aborted.
            connection._aborted = True
            connection._protocol = None
    return closed


def _close_psycopg(connection: Any) -> bool:
    # What AsyncConnection.close() does, minus the coroutine: psycopg only registers its
    # socket with a loop while it waits, so an idle connection has nothing on the loop.
    if connection.closed:
        return False
    connection._closed = True
    connection.pgconn.finish()
    return True


def _close_aiosqlite(connection: Any) -> bool:
    # aiosqlite runs sqlite3 in a thread of its own and binds no loop.  What its stop()
    # (0.22.1+) queues, without the future stop() would make on the running loop (the thread
    # would report to that loop after it may have closed): the thread closes the sqlite3
    # connection and ends.  Older releases are left to their own close().
    import sys

    sentinel = getattr(sys.modules.get("aiosqlite.core"), "_STOP_RUNNING_SENTINEL", None)
    queue = getattr(connection, "_tx", None)
    if sentinel is None or queue is None or not getattr(connection, "_running", False):
        return False

    def close_and_stop() -> Any:
        if connection._connection is not None:
            connection._connection.close()
            connection._connection = None
        return sentinel

    connection._running = False
    queue.put_nowait((None, close_and_stop))
    return True


def _close_stream(connection: Any, transport: Any, forget: Any) -> bool:
    """A driver connection over an asyncio transport (aiomysql, asyncmy): its socket closed
    without the loop, then ``forget()`` drops the driver's references to the transport, as
    the driver's own ``close()`` does, so it never warns about an unclosed connection."""
    loop = connection._loop
    if _running_elsewhere(loop):
        # Its loop runs in another thread: only that thread may touch its selector.  The
        # driver's close() would close the socket one iteration later (see the asyncpg case):
        # that thread closes it directly instead, as below.
        loop.call_soon_threadsafe(_close_stream, connection, transport, forget)
        return True
    if transport is None:
        return False
    if hasattr(transport, "_sock"):
        closed = _close_selector_transport(transport)
    else:  # uvloop's: libuv closes the handle without a round trip (or did, with its loop)
        if not loop.is_closed():
            transport.abort()
        closed = True
    forget()
    return closed


def _close_aiomysql(connection: Any) -> bool:
    def forget() -> None:
        connection._writer = None
        connection._reader = None

    writer = connection._writer
    return _close_stream(connection, getattr(writer, "transport", None), forget)


def _close_asyncmy(connection: Any) -> bool:
    def forget() -> None:
        connection._transport = None
        connection._connected = False

    return _close_stream(connection, connection._transport, forget)


def keep_for_parent(driver_connection: Any) -> None:
    """In a forked child: never close nor collect this connection of the parent's loop."""
    _kept_for_parent.append(driver_connection)


def close_without_loop(driver_connection: Any, loop_number: Optional[int] = None) -> bool:
    """Close ``driver_connection``'s socket now; True when a socket was closed.

    ``loop_number``: the loop the connection is known to belong to, when the driver does not
    say (psycopg); one inherited through fork() means: leave it alone.
    """
    loop = getattr(driver_connection, "_loop", None)
    if loop_number is None and loop is not None:
        loop_number = loop_id(loop)
    if loop_number is not None and inherited(loop_number):
        keep_for_parent(driver_connection)
        return False
    module = type(driver_connection).__module__ or ""
    if module.startswith("asyncpg"):
        return _close_asyncpg(driver_connection)
    if module.startswith("psycopg"):
        return _close_psycopg(driver_connection)
    if module.startswith("aiosqlite"):
        return _close_aiosqlite(driver_connection)
    if module.startswith("aiomysql"):
        return _close_aiomysql(driver_connection)
    if module.startswith("asyncmy"):
        return _close_asyncmy(driver_connection)
    return False
