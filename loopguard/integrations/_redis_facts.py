"""What the redis.asyncio guard knows about pools and connections, and the records it builds.

A pool (``ConnectionPool`` and its subclasses: the pool a ``Redis`` client builds for itself,
``BlockingConnectionPool``, ``SentinelConnectionPool``) is tracked from its creation: the
user's line that created it (or the client around it), the server's URL without secrets.
A connection is tracked from the moment it connects: the loop, line and test of that first
I/O, and the pool it belongs to.  The loop a connected connection belongs to is always read
from the connection itself (its ``StreamWriter``'s loop), never from these facts.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any, Optional

from .. import _context, _release, _sites
from .._causes import likely_cause
from .._loops import LoopRef, loop_id
from .._record import Record
from .._registry import Binding, Origin, Registry, Tracked

CODE = "LG110"
RESOURCE_CLIENT = "redis.asyncio client"  # a pool, with the clients that share it
RESOURCE_CONNECTION = "redis.asyncio connection"  # held, of no known pool (before install())
MAX_FRAMES = 40


class PoolFacts(Tracked):
    """One pool: where it (or the client that built it) was created, and its server."""

    __slots__ = ("url", "pool_class")

    def __init__(self, origin: Origin, pool_class: str) -> None:
        super().__init__(origin)
        # Read at the pool's first checkout: a subclass sets its own attributes after
        # ConnectionPool.__init__ (SentinelConnectionPool's service_name).
        self.url: Optional[str] = None
        self.pool_class = pool_class

    def url_of(self, pool: Any) -> str:
        if self.url is None:
            self.url = pool_url(pool)
        return self.url


class ConnectionFacts(Tracked):
    """One connection: where and on which loop it connected, and the pool it belongs to."""

    __slots__ = ("pool",)

    def __init__(self, origin: Origin, binding: Binding, pool: Optional[PoolFacts]) -> None:
        super().__init__(origin, binding)
        self.pool = pool


POOLS: Registry[PoolFacts] = Registry("redis pools")
CONNECTIONS: Registry[ConnectionFacts] = Registry("redis connections")
UNKNOWN_ORIGIN = Origin(None, None, None, known=False)


# -- who is on the stack --------------------------------------------------------------------

_dirs: dict[str, str] = {}  # "redis": the package's directory, set by set_directory()


def set_directory(redis_module: Any) -> None:
    _dirs["redis"] = os.path.dirname(redis_module.__file__) + os.sep


def _is_library(filename: str) -> bool:
    """Code of an installed library (another one than redis, which is internal already)."""
    return os.sep + "site-packages" + os.sep in filename or (
        os.sep + "dist-packages" + os.sep in filename
    )


def creation_site(obj: Any, skip: int = 2) -> Optional[_sites.Site]:
    """The user's line that created ``obj`` (a pool, or the client that builds one).

    Frames of redis-py, loopguard, asyncio and the standard library are skipped, and so are
    methods of ``obj`` itself and of redis clients (a subclass's ``__init__`` in user code):
    the line is the one that called ``Redis(...)``, ``from_url()`` or ``Sentinel.master_for``.
    When another installed library builds the client (a cache backend, a task queue), the
    line is the user's call into that library; the library's own line only when no user
    code is on the stack (a client built at the library's import, say).
    """
    frame: Optional[FrameType] = sys._getframe(skip)
    library_site: Optional[_sites.Site] = None
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        code = frame.f_code
        if code.co_argcount and _is_redis_object(frame.f_locals.get("self"), obj):
            frame = frame.f_back
            continue
        if not _sites.is_internal(code.co_filename):
            if not _is_library(code.co_filename):
                return _sites.site_of(frame, _context.rootdir)
            if library_site is None:
                library_site = _sites.site_of(frame, _context.rootdir)
        frame = frame.f_back
    return library_site


_client_classes: tuple[type, ...] = ()  # redis.asyncio's Redis and ConnectionPool, set by setup()


def set_client_classes(*classes: type) -> None:
    global _client_classes
    _client_classes = classes


def _is_redis_object(candidate: Any, obj: Any) -> bool:
    return candidate is not None and (candidate is obj or isinstance(candidate, _client_classes))


def command_name(frame: Optional[FrameType]) -> Optional[str]:
    """The redis command being run (``GET``), read from redis-py's ``execute_command``."""
    redis_dir = _dirs.get("redis", "")
    for _ in range(MAX_FRAMES):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_filename.startswith(redis_dir) and code.co_name.endswith("execute_command"):
            args = frame.f_locals.get("args")
            if isinstance(args, tuple) and args and isinstance(args[0], (str, bytes)):
                name = args[0].decode() if isinstance(args[0], bytes) else args[0]
                return name.upper()
        elif code.co_filename.startswith(redis_dir) and code.co_name in ("execute", "_execute"):
            owner = type(frame.f_locals.get("self")).__name__
            if "Pipeline" in owner:
                return "pipeline execute()"
        frame = frame.f_back
    return None


# -- URLs, never with a password ------------------------------------------------------------


def url_of(kwargs: dict[str, Any]) -> str:
    """``redis://host:port/db`` or ``unix:///path?db=N`` from a pool's connection kwargs;
    a username is shown, a password never is."""
    user = kwargs.get("username")
    user_part = f"{user}@" if user else ""
    db = kwargs.get("db", 0)
    path = kwargs.get("path")
    if path:
        return f"unix://{user_part}{path}?db={db}"
    scheme = "rediss" if kwargs.get("ssl") or "ssl_context" in kwargs else "redis"
    host = kwargs.get("host", "localhost")
    port = kwargs.get("port", 6379)
    return f"{scheme}://{user_part}{host}:{port}/{db}"


def connection_url(conn: Any) -> str:
    path = getattr(conn, "path", None)
    kwargs: dict[str, Any] = {
        "username": getattr(conn, "username", None),
        "db": getattr(conn, "db", 0),
        "path": path,
    }
    if not path:
        kwargs.update(host=getattr(conn, "host", "?"), port=getattr(conn, "port", "?"))
    return url_of(kwargs)


def pool_url(pool: Any) -> str:
    kwargs = dict(getattr(pool, "connection_kwargs", None) or {})
    service = getattr(pool, "service_name", None)  # SentinelConnectionPool: no host of its own
    if service and "host" not in kwargs and not kwargs.get("path"):
        return f"redis+sentinel://{service}/{kwargs.get('db', 0)}"
    return url_of(kwargs)


# -- the loop a connection belongs to, and dropping it without I/O ---------------------------


def owner_loop(conn: Any) -> Any:
    """The loop of a connected connection (its StreamWriter's), else None."""
    writer = conn._writer
    return writer._loop if writer is not None else None


def can_heal(owner: LoopRef) -> bool:
    """Its connections can be dropped here: their loop is closed, or open but not running
    (a loop running in another thread owns its sockets; a forked child's are the parent's)."""
    return owner.state() in ("closed", "idle")


def drop_without_io(conn: Any) -> bool:
    """Close a connection's socket without running its loop and reset it, as disconnect()
    would, so that its next use connects anew on the running loop.  True if a socket was
    closed."""
    writer = conn._writer
    closed = False
    if writer is not None:
        closed = _release.close_transport(writer.transport)
    force = getattr(conn, "_force_disconnect", None)
    if force is not None:  # redis-py 8: resets every per-socket state (and _close()s)
        force()
    else:
        conn._parser.on_disconnect()
        conn._reader = None
        conn._writer = None
    return closed


def drop_idle(pool: Any, owner: Any) -> tuple[int, int]:
    """Drop the pool's idle connections of loop ``owner``: (dropped, sockets closed)."""
    dropped = closed = 0
    for conn in list(pool._available_connections):
        if conn._writer is not None and conn._writer._loop is owner:
            dropped += 1
            closed += drop_without_io(conn)
    return dropped, closed


# -- records --------------------------------------------------------------------------------


def mismatch_record(
    *,
    conn: Any,
    conn_facts: Optional[ConnectionFacts],
    pool_facts: Optional[PoolFacts],
    owner: LoopRef,
    loop: Any,
    action: str,
    operation: str,
    skip: int,
) -> Record:
    """LG110: ``conn`` belongs to ``owner`` and is about to be used on ``loop``."""
    used_during = _context.current_test()
    used = _sites.user_site(_context.rootdir, skip=skip)
    origin = pool_facts.origin if pool_facts is not None else UNKNOWN_ORIGIN
    site = origin.site
    binding = conn_facts.binding if conn_facts is not None else None
    if binding is not None and binding.loop.id != owner.id:
        binding = None  # the facts are of an earlier life of the connection
    return Record(
        code=CODE,
        action=action,
        resource=RESOURCE_CLIENT if pool_facts is not None else RESOURCE_CONNECTION,
        operation=operation,
        url=(pool_facts.url if pool_facts is not None else None) or connection_url(conn),
        pool_class=pool_facts.pool_class if pool_facts is not None else None,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=origin.created_during,
        created_by=origin.fixture,
        bound_during=binding.during if binding else None,
        bound_at=str(binding.site) if binding and binding.site else None,
        used_at=str(used) if used else None,
        used_during=used_during,
        owner_loop_id=owner.id,
        owner_loop_closed=owner.is_closed(),
        current_loop_id=loop_id(loop),
        cause=likely_cause(owner.state(), used_during is not None),
        owner_loop=owner.describe(),
        used_site=(used.filename, used.lineno) if used else None,
        created_in_loop=origin.created_in_loop,
    )
