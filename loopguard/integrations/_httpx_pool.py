"""Reading and emptying an httpcore connection pool without I/O on the loop its connections use.

httpcore keeps a pool's connections in ``AsyncConnectionPool._connections`` (1.x; ``_pool``
before) and the requests it is serving in ``_requests``.  Each connection
(``AsyncHTTPConnection``, or a proxy's connection around one) holds, once connected, an
HTTP/1.1 or HTTP/2 connection whose ``_network_stream`` wraps anyio's socket stream, itself
(or the TLS stream around it) holding the asyncio transport of the loop it was opened on.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from .. import _release
from .._log import app_log
from .._loops import inherited

MAX_DEPTH = 6  # connection -> connection -> network stream -> stream -> TLS -> socket stream


def _held(pool: Any) -> list[Any]:
    """The pool's own list of connections (``_connections``; ``_pool`` before httpcore 1.0)."""
    held = getattr(pool, "_connections", None)
    return held if held is not None else pool._pool  # type: ignore[no-any-return]


def connections(pool: Any) -> list[Any]:
    return list(_held(pool))


def holds_nothing(pool: Any) -> bool:
    """No request in flight and no connection left open: nothing of any loop is in it."""
    return not getattr(pool, "_requests", ()) and all(c.is_closed() for c in connections(pool))


def can_release(pool: Any) -> bool:
    """Every connection idle (or closed) and no request in flight: nothing is using them."""
    return not getattr(pool, "_requests", ()) and all(
        c.is_idle() or c.is_closed() for c in connections(pool)
    )


def _transport_of(connection: Any) -> Optional[asyncio.BaseTransport]:
    """The asyncio transport under a connection, found through the wrappers' attributes."""
    obj = connection
    for _ in range(MAX_DEPTH):
        if isinstance(obj, asyncio.BaseTransport):
            return obj
        for attribute in ("_connection", "_network_stream", "_stream", "transport_stream"):
            inner = getattr(obj, attribute, None)
            if inner is not None:
                obj = inner
                break
        else:
            obj = getattr(obj, "_transport", None)
        if obj is None:
            return None
    return obj if isinstance(obj, asyncio.BaseTransport) else None


def close_transport(transport: Any) -> bool:
    """Close a transport's socket without running its loop; True when a socket was closed."""
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None:  # asyncio's own TLS: the socket is the inner transport's
        closed = close_transport(getattr(ssl_protocol, "_transport", None))
        transport._closed = True  # it would warn "unclosed transport" when collected
        return closed
    if transport is None:
        return False
    if hasattr(transport, "_sock"):
        return _release._close_selector_transport(transport)
    loop = getattr(transport, "_loop", None)
    if loop is not None and loop.is_closed():
        return False  # uvloop closed its handles with the loop
    transport.abort()  # uvloop: libuv closes the handle without a round trip
    return True


def release_all(pool: Any, loop_number: int) -> tuple[int, int]:
    """Drop every connection of the pool (all idle or closed: ``can_release``), closing their
    sockets directly; those of a loop inherited through fork() are kept for the parent.
    Returns (connections dropped, sockets closed)."""
    held = _held(pool)
    dropped = list(held)
    held.clear()
    closed = 0
    for connection in dropped:
        if connection.is_closed():
            continue
        if inherited(loop_number):
            _release.keep_for_parent(connection)
            continue
        try:
            transport = _transport_of(connection)
            closed += close_transport(transport) if transport is not None else 0
        except Exception as exc:  # reported below; the pool is consistent already
            app_log(
                "warning",
                "loopguard.release_failed",
                connection=repr(connection),
                error=f"{type(exc).__name__}: {exc}",
            )
    return len(dropped), closed
