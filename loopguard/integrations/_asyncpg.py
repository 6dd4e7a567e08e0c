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
  listeners), ``ConnectionResource._check_conn_validity`` (prepared statements, cursors,
  transactions), ``Connection._copy_out``/``_copy_in`` (the copy methods), ``Connection.close``:
  the running loop must be ``conn._loop`` (LG103).  ``PoolConnectionProxy`` calls methods through
  the class, so acquired connections are covered too.

Calls made by SQLAlchemy's asyncpg dialect are left to the SQLAlchemy guard, which checks its
pool at checkout (LG101); a connection it has checked out and that is then misused on another
loop fails as asyncpg decides.  Raw use of such a connection (``driver_connection``) is checked.

The hot path is one running-loop call and an identity compare; everything else runs only when
the loops differ.  ``warn`` mode reports (record and ``LoopMismatchWarning``, once per object and
loop) and lets the call go ahead unchanged: an asyncpg pool or connection cannot be moved to
another loop, so asyncpg's own error follows, as it would without loopguard.

Pools have ``__slots__`` and no ``__weakref__``: they are tracked by ``id()``, forgotten on
``close()``/``terminate()``, and also when the pool is garbage-collected (a finalizer on its
``_holders`` list, replaced at creation by a weak-referenceable list).  Connections support weak
references and are tracked in a ``WeakKeyDictionary``.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from types import FrameType
from typing import Any, Callable, Optional
from urllib.parse import quote

from .. import _context, _secrets, _sites
from .._patching import PatchStack
from .._report import (
    LG103,
    likely_cause,
    raise_mismatch,
    warn_mismatch,
    warn_pool_created_outside_loop,
)
from .._state import STATE
from . import DidNotEnable

MIN_VERSION = (0, 27)
RESOURCE_POOL = "asyncpg Pool"
RESOURCE_CONNECTION = "asyncpg Connection"
_MAX_FRAMES = 40
_get_ident = threading.get_ident
_verdicts = _sites._verdicts
# ConnectionResource methods that only read local state: no I/O, so no loop is involved.
_NO_IO = frozenset({"get_name", "get_query", "get_statusmsg", "get_parameters", "get_attributes"})

# Where a connection came from: opened directly, by an asyncpg Pool, by SQLAlchemy's pool,
# or before install() (unknown).
ORIGIN_DIRECT = "direct"
ORIGIN_POOL = "pool"
ORIGIN_SQLALCHEMY = "sqlalchemy"
ORIGIN_UNKNOWN = "unknown"


class PoolInfo:
    """Facts about one pool, keyed by ``id(pool)`` (pools cannot be weakly referenced)."""

    __slots__ = (
        "site",
        "created_during",
        "created_in_loop",
        "implicit_loop",
        "first_use_pending",
        "warned_loop",
        "ref",
    )

    def __init__(
        self,
        site: Optional[_sites.Site],
        created_during: Optional[str],
        created_in_loop: Optional[bool],
        implicit_loop: bool,
    ) -> None:
        self.site = site
        self.created_during = created_during
        self.created_in_loop = created_in_loop
        # True when create_pool() ran with no loop running and no loop= argument.
        self.implicit_loop = implicit_loop
        # Such a pool is right or wrong only at its first use (``await pool``): on the loop it
        # captured (new_event_loop(), set_event_loop(), run_until_complete()) it is right.
        self.first_use_pending = implicit_loop
        self.warned_loop: Optional[int] = None  # warn mode: the loop already warned about
        # Forgets the entry when the pool is garbage-collected.
        self.ref: Optional[weakref.finalize[[int, PoolInfo], None]] = None

    def __repr__(self) -> str:
        where = str(self.site) if self.site else "unknown site"
        return f"<PoolInfo created at {where}>"


class ConnInfo:
    """Facts about one connection (weakly keyed by the connection)."""

    __slots__ = ("origin", "site", "created_during", "warned_loop")

    def __init__(
        self, origin: str, site: Optional[_sites.Site], created_during: Optional[str]
    ) -> None:
        self.origin = origin
        self.site = site
        self.created_during = created_during
        self.warned_loop: Optional[int] = None

    def __repr__(self) -> str:
        where = str(self.site) if self.site else "no site"
        return f"<ConnInfo {self.origin}, {where}>"


class _HolderList(list[Any]):
    """``Pool._holders`` as a list that can be weakly referenced: it dies with its pool."""

    __slots__ = ("__weakref__",)


_pools: dict[int, PoolInfo] = {}
# Finalizers run wherever the collector does: entries change under this (re-entrant) lock.
_pools_lock = threading.RLock()
_conns: weakref.WeakKeyDictionary[Any, ConnInfo] = weakref.WeakKeyDictionary()
# Directory prefixes, set by setup(): asyncpg's package and pool module.
_asyncpg_dir = ""
_pool_file = ""
_own_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


_sqlalchemy_prefix: Optional[str] = None  # found once SQLAlchemy is imported


def _sqlalchemy_dir() -> Optional[str]:
    global _sqlalchemy_prefix
    if _sqlalchemy_prefix is None:
        module = sys.modules.get("sqlalchemy")
        file = getattr(module, "__file__", None)
        if file:
            _sqlalchemy_prefix = os.path.dirname(file) + os.sep
    return _sqlalchemy_prefix


# -- tracking ---------------------------------------------------------------------------


def _forget(key: int, info: PoolInfo) -> None:
    with _pools_lock:
        if _pools.get(key) is info:  # not a newer pool that got the same id
            del _pools[key]


def _remember_pool(pool: Any, info: PoolInfo) -> None:
    key = id(pool)
    anchor = _gc_anchor(pool)
    if anchor is not None:
        info.ref = weakref.finalize(anchor, _forget, key, info)
        info.ref.atexit = False
    with _pools_lock:
        old = _pools.get(key)
        if old is not None and old.ref is not None:
            old.ref.detach()
        _pools[key] = info


def _gc_anchor(pool: Any) -> Any:
    """An object that lives exactly as long as ``pool`` and can be weakly referenced."""
    holders = pool._holders
    if type(holders) is list and not holders:
        pool._holders = holders = _HolderList()
    if isinstance(holders, _HolderList):
        return holders
    try:  # a pool created before install(): its holders (weakly referenceable) die with it
        weakref.ref(holders[0])
        return holders[0]
    except (IndexError, TypeError):
        return None


def _forget_pool(pool: Any) -> None:
    with _pools_lock:
        info = _pools.pop(id(pool), None)
    if info is not None and info.ref is not None:
        info.ref.detach()


def _pool_info(pool: Any) -> PoolInfo:
    """The pool's facts; a pool created before install() gets an entry with no site."""
    info = _pools.get(id(pool))
    if info is None:
        info = PoolInfo(None, None, None, implicit_loop=False)
        _remember_pool(pool, info)
    return info


def _conn_info(conn: Any) -> ConnInfo:
    info = _conns.get(conn)
    if info is None:
        info = _conns[conn] = ConnInfo(ORIGIN_UNKNOWN, None, None)
    return info


def _creation(frame: Optional[FrameType]) -> tuple[str, Optional[_sites.Site]]:
    """Who is opening a connection: an asyncpg Pool, SQLAlchemy, or the user (with the site)."""
    sqlalchemy_dir = _sqlalchemy_dir()
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        filename = frame.f_code.co_filename
        if filename == _pool_file:
            return ORIGIN_POOL, None
        if sqlalchemy_dir and filename.startswith(sqlalchemy_dir):
            return ORIGIN_SQLALCHEMY, None
        internal = _verdicts.get(filename)  # _sites._is_internal()'s cache, without the call
        if internal is None:
            internal = _sites._is_internal(filename)
        if not internal:
            return ORIGIN_DIRECT, _site(frame)
        frame = frame.f_back
    return ORIGIN_DIRECT, None


def _site(frame: FrameType) -> _sites.Site:
    code = frame.f_code
    path = _sites.display_path(code.co_filename, _context.rootdir)
    return _sites.Site(path, frame.f_lineno, code.co_name, code.co_filename)


def _called_by_sqlalchemy(frame: Optional[FrameType]) -> bool:
    """True when the first caller outside asyncpg and loopguard is SQLAlchemy's code."""
    sqlalchemy_dir = _sqlalchemy_dir()
    if not sqlalchemy_dir:
        return False
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return False
        filename = frame.f_code.co_filename
        if not filename.startswith((_asyncpg_dir, _own_dir)):
            return filename.startswith(sqlalchemy_dir)
        frame = frame.f_back
    return False


def _pool_of(conn: Any) -> Any:
    """The asyncpg Pool ``conn`` belongs to, or None."""
    proxy = getattr(conn, "_proxy", None)
    holder = getattr(proxy, "_holder", None)
    if holder is None:
        holder_ref = getattr(conn, "_pool_holder", None)  # asyncpg 0.32+: idle members too
        holder = holder_ref() if holder_ref is not None else None
    return getattr(holder, "_pool", None)


# -- URLs, never with a password ----------------------------------------------------------


def _url_from_parts(user: Any, host: Any, port: Any, database: Any) -> str:
    user_part = f"{user}@" if user else ""
    if isinstance(host, str) and host.startswith("/"):
        query = f"?host={quote(host)}" + (f"&port={port}" if port else "")
        return f"postgresql://{user_part}/{database or ''}{query}"
    host_part = f"{host or ''}" + (f":{port}" if port and host else "")
    return f"postgresql://{user_part}{host_part}/{database or ''}"


def _pool_url(pool: Any) -> str:
    args = pool._connect_args or ()
    kwargs = pool._connect_kwargs or {}
    dsn = args[0] if args else kwargs.get("dsn")
    if isinstance(dsn, str) and dsn:
        return _secrets.mask_dsn(dsn)
    return _url_from_parts(
        kwargs.get("user"), kwargs.get("host"), kwargs.get("port"), kwargs.get("database")
    )


def _connection_url(conn: Any) -> str:
    params = getattr(conn, "_params", None)
    user = getattr(params, "user", None)
    database = getattr(params, "database", None)
    addr = getattr(conn, "_addr", None)
    if isinstance(addr, str):  # a unix socket: /dir/.s.PGSQL.<port>
        directory, _, name = addr.rpartition("/")
        port = name.rpartition(".")[2] if name.startswith(".s.PGSQL.") else None
        return _url_from_parts(user, directory or "/", port, database)
    if isinstance(addr, tuple) and len(addr) >= 2:
        return _url_from_parts(user, addr[0], addr[1], database)
    return _url_from_parts(user, None, None, database)


# -- records ------------------------------------------------------------------------------


def _owner_state(owner: _context.LoopRef) -> str:
    loop = owner()
    if loop is None or loop.is_closed():
        return "closed"
    return "running" if loop.is_running() else "idle"


def _record(
    *,
    resource: str,
    owner_loop: Any,
    loop: Any,
    action: str,
    operation: str,
    url: str,
    pool_class: Optional[str],
    site: Optional[_sites.Site],
    created_during: Optional[str],
    created_in_loop: Optional[bool],
    implicit_loop: bool,
    origin: str,
) -> dict[str, Any]:
    owner = _context.LoopRef(owner_loop)
    state = _owner_state(owner)
    used_during = _context.current_test()
    used = _sites.user_site(_context.rootdir, skip=3)
    cause = "outside-loop" if implicit_loop else likely_cause(state, used_during is not None)
    return {
        "code": LG103,
        "action": action,
        "resource": resource,
        "operation": operation,
        "url": url,
        "pool_class": pool_class,
        "created_at": site.location if site else None,
        "created_in": site.function if site else None,
        "created_during": created_during,
        # A pool is bound when it is created, a connection when it is opened.
        "bound_during": created_during,
        "bound_at": str(site) if site else None,
        "used_at": str(used) if used else None,
        "used_during": used_during,
        "owner_loop_id": owner.id,
        "owner_loop_closed": state == "closed",
        "current_loop_id": _context.loop_id(loop),
        "cause": cause,
        # message-only helpers (not logged)
        "created_in_loop": created_in_loop,
        "owner_loop": owner.describe(),
        "used_site": (used.filename, used.lineno) if used else None,
        "origin": origin,
    }


def _report(record_of: Callable[[str], dict[str, Any]], info: Any, loop: Any) -> None:
    """raise: raise at once; warn: one warning per object and loop, then carry on."""
    __tracebackhide__ = True
    if STATE.mode == "raise":
        raise raise_mismatch(record_of("raised"))
    loop_number = _context.loop_id(loop)
    if info.warned_loop == loop_number:
        return
    info.warned_loop = loop_number
    warn_mismatch(record_of("warned"))


def _on_pool_mismatch(pool: Any, loop: Any, operation: str) -> None:
    __tracebackhide__ = True
    if STATE.mode is None:
        return
    info = _pool_info(pool)
    _report(_pool_record_of(pool, info, RESOURCE_POOL, pool._loop, loop, operation), info, loop)


def _pool_record_of(
    pool: Any, info: Any, resource: str, owner_loop: Any, loop: Any, operation: str
) -> Callable[[str], dict[str, Any]]:
    """Builds the record of a misuse of ``pool``, or of a connection acquired from it."""

    def record_of(action: str) -> dict[str, Any]:
        return _record(
            resource=resource,
            owner_loop=owner_loop,
            loop=loop,
            action=action,
            operation=operation,
            url=_pool_url(pool),
            pool_class=type(pool).__name__,
            site=info.site,
            created_during=info.created_during,
            created_in_loop=info.created_in_loop,
            implicit_loop=info.implicit_loop,
            origin=ORIGIN_POOL,
        )

    return record_of


def _on_connection_mismatch(conn: Any, loop: Any, operation: str, caller: FrameType) -> None:
    __tracebackhide__ = True
    if STATE.mode is None or _called_by_sqlalchemy(caller):
        return
    pool = _pool_of(conn)
    if pool is not None:
        info: Any = _pool_info(pool)  # one warning per pool and loop, whichever member is used
        record_of = _pool_record_of(pool, info, RESOURCE_CONNECTION, conn._loop, loop, operation)
    else:
        conn_info = _conn_info(conn)
        info = conn_info

        def record_of(action: str) -> dict[str, Any]:
            return _record(
                resource=RESOURCE_CONNECTION,
                owner_loop=conn._loop,
                loop=loop,
                action=action,
                operation=operation,
                url=_connection_url(conn),
                pool_class=None,
                site=conn_info.site,
                created_during=conn_info.created_during,
                created_in_loop=True,
                implicit_loop=False,
                origin=conn_info.origin,
            )

    _report(record_of, info, loop)


def _pool_operation(frame: Optional[FrameType], default: str) -> str:
    """The public Pool method the user called: the outermost frame in asyncpg's pool module."""
    name = None
    for _ in range(_MAX_FRAMES):
        if frame is None or frame.f_code.co_filename != _pool_file:
            break
        name = frame.f_code.co_name
        frame = frame.f_back
    if name is None or name in ("_acquire", "__await__"):
        return default
    if name in ("__aenter__", "__aexit__") and default != "Pool.__await__":
        return default  # PoolAcquireContext: `async with pool.acquire()`
    return f"Pool.{name}"


# -- wrappers -----------------------------------------------------------------------------


def _make_pool_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _context.loop_id(self._loop)  # number loops in the order they are bound
        running = _context.running_loop()
        implicit = running is None and kwargs.get("loop") is None
        site = _sites.user_site(_context.rootdir, skip=2)
        info = PoolInfo(site, _context.current_test(), running is not None, implicit)
        _remember_pool(self, info)

    return __init__


def _make_pool_async_init(original: Callable[..., Any]) -> Callable[..., Any]:
    """``await pool`` / ``async with pool``, the first use of every pool: the running loop
    must be ``pool._loop`` (LG103); for a pool created with no loop running, this first use
    also decides LG102: warned only when it is not on the loop the pool captured."""

    async def _async__init__(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        loop = _context.foreign_running_loop(self._loop)
        info = _pools.get(id(self))
        if info is not None and info.first_use_pending:
            info.first_use_pending = False
            if loop is None:  # used on the loop it captured: that was the right one
                info.implicit_loop = False
            elif _pool_in_use(self):
                _warn_created_outside_loop(self, info, loop)
        if loop is not None and _pool_in_use(self):
            _on_pool_mismatch(self, loop, _pool_operation(sys._getframe(1), "Pool.__await__"))
        return await original(self, *args, **kwargs)

    return _async__init__


def _warn_created_outside_loop(pool: Any, info: PoolInfo, loop: Any) -> None:
    """LG102: created with no loop running, first used on a loop other than the one it took."""
    site = info.site
    used = _sites.user_site(_context.rootdir, skip=2)
    warn_pool_created_outside_loop(
        {
            "code": "LG102",
            "action": "warned",
            "resource": RESOURCE_POOL,
            "url": _pool_url(pool),
            "pool_class": type(pool).__name__,
            "created_at": site.location if site else None,
            "created_in": site.function if site else None,
            "created_during": info.created_during,
            "used_at": str(used) if used else None,
            "used_during": _context.current_test(),
            "owner_loop_id": _context.loop_id(pool._loop),
            "current_loop_id": _context.loop_id(loop),
            "cause": "outside-loop",
            # The warning points at the line that called create_pool().
            "used_site": (site.filename, site.lineno) if site else None,
        }
    )


def _pool_in_use(pool: Any, *args: Any, **kwargs: Any) -> bool:
    # A closed or closing pool raises asyncpg's own "pool is closed/closing", with no I/O.
    return not (pool._closed or getattr(pool, "_closing", False))


# The Pool coroutines whose call to _check_init() is checked, and the operation they are.
# (close() has a wrapper of its own; terminate() does no I/O on the loop and is not checked.)
_CHECKED_INIT_CALLERS = {"_acquire": "Pool.acquire", "release": "Pool.release"}


def _make_pool_check_init(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``_acquire`` and ``release`` call ``_check_init()`` before any I/O, after asyncpg's own
    checks (pool closing, connection already released): the loop is checked there."""

    def _check_init(self: Any) -> Any:
        __tracebackhide__ = True
        result = original(self)  # not initialized or closed: asyncpg's own error, no I/O
        own = self._loop
        # inline _context.foreign_running_loop(): a hot path (two Python calls fewer)
        if getattr(own, "_thread_id", None) == _get_ident():
            return result
        loop = _context.running_loop()
        if loop is not own and loop is not None:
            caller = sys._getframe(1)
            operation = _CHECKED_INIT_CALLERS.get(caller.f_code.co_name)
            if operation is not None and _pool_in_use(self):
                _on_pool_mismatch(self, loop, _pool_operation(caller, operation))
        return result

    return _check_init


def _make_pool_close(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def close(self: Any) -> Any:
        __tracebackhide__ = True
        loop = _context.foreign_running_loop(self._loop)
        if loop is not None and not self._closed:
            _on_pool_mismatch(self, loop, "Pool.close")
        try:
            return await original(self)
        finally:
            if self._closed:
                _forget_pool(self)

    return close


def _make_pool_terminate(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def terminate(self: Any) -> Any:
        try:
            return original(self)
        finally:
            if self._closed:
                _forget_pool(self)

    return terminate


def _make_connection_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _context.loop_id(self._loop)  # number loops in the order they are bound
        origin, site = _creation(sys._getframe(1))
        _conns[self] = ConnInfo(origin, site, _context.current_test())

    return __init__


def _make_check_open(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def _check_open(self: Any) -> Any:
        __tracebackhide__ = True
        result = original(self)  # closed: asyncpg's own InterfaceError, no I/O either way
        own = self._loop
        # inline _context.foreign_running_loop(): a hot path (two Python calls fewer)
        if getattr(own, "_thread_id", None) == _get_ident():
            return result
        loop = _context.running_loop()
        if loop is not own and loop is not None:
            caller = sys._getframe(1)
            operation = f"Connection.{caller.f_code.co_name.lstrip('_')}"
            _on_connection_mismatch(self, loop, operation, caller)
        return result

    return _check_open


def _make_check_conn_validity(original: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    def _check_conn_validity(self: Any, meth_name: str) -> Any:
        __tracebackhide__ = True
        result = original(self, meth_name)  # released or closed: asyncpg's own error
        if meth_name in _NO_IO:  # nothing to check: no I/O, so no loop is involved
            return result
        own = self._connection._loop
        # inline _context.foreign_running_loop(): a hot path (two Python calls fewer)
        if getattr(own, "_thread_id", None) == _get_ident():
            return result
        loop = _context.running_loop()
        if loop is not own and loop is not None:
            conn = self._connection
            operation = f"{type(self).__name__}.{meth_name}"
            _on_connection_mismatch(conn, loop, operation, sys._getframe(1))
        return result

    return _check_conn_validity


def _make_connection_coroutine(name: str) -> Callable[[Any], Any]:
    """``close`` and the copy helpers: checked when awaited, before the original runs."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            loop = _context.foreign_running_loop(self._loop)
            if loop is not None and not self.is_closed():
                caller = sys._getframe(1)
                # _copy_out/_copy_in: name the public copy_* method that called them.
                operation = "Connection." + (
                    name if name == "close" else caller.f_code.co_name.lstrip("_")
                )
                _on_connection_mismatch(self, loop, operation, caller)
            return await original(self, *args, **kwargs)

        return guarded

    return make


# -- the integration ----------------------------------------------------------------------


def _patch_points() -> list[tuple[Any, str, Callable[[Any], Any], bool]]:
    """(owner, attribute, wrapper factory, required)."""
    from asyncpg import connresource  # type: ignore[import-untyped]
    from asyncpg.connection import Connection  # type: ignore[import-untyped]
    from asyncpg.pool import Pool  # type: ignore[import-untyped]

    return [
        (Pool, "__init__", _make_pool_init, True),
        (Pool, "_async__init__", _make_pool_async_init, True),
        (Pool, "_check_init", _make_pool_check_init, True),
        (Pool, "close", _make_pool_close, True),
        (Pool, "terminate", _make_pool_terminate, True),
        (Connection, "__init__", _make_connection_init, True),
        (Connection, "_check_open", _make_check_open, True),
        (Connection, "close", _make_connection_coroutine("close"), True),
        (Connection, "_copy_out", _make_connection_coroutine("_copy_out"), False),
        (Connection, "_copy_in", _make_connection_coroutine("_copy_in"), False),
        (
            connresource.ConnectionResource,
            "_check_conn_validity",
            _make_check_conn_validity,
            True,
        ),
    ]


class AsyncpgIntegration:
    name = "asyncpg"

    def setup(self, patches: PatchStack) -> None:
        global _asyncpg_dir, _pool_file
        try:
            import asyncpg
            import asyncpg.pool
        except ImportError as exc:
            msg = f"asyncpg is not installed ({exc}); pip install asyncpg"
            raise DidNotEnable(msg) from exc
        version = tuple(int(part) for part in asyncpg.__version__.split(".")[:2])
        if version < MIN_VERSION:
            msg = (
                f"asyncpg {asyncpg.__version__} is too old: loopguard supports "
                f"{'.'.join(map(str, MIN_VERSION))} and newer"
            )
            raise DidNotEnable(msg)
        points = _patch_points()
        missing = [
            f"{owner.__name__}.{attr}"
            for owner, attr, _, required in points
            if required and not hasattr(owner, attr)
        ]
        if missing:  # checked before anything is patched
            msg = f"asyncpg {asyncpg.__version__} lacks {', '.join(missing)}"
            raise DidNotEnable(msg)
        _asyncpg_dir = os.path.dirname(asyncpg.__file__) + os.sep
        _pool_file = asyncpg.pool.__file__ or ""
        for owner, attr, make, _ in points:
            if hasattr(owner, attr):
                patches.wrap(owner, attr, make)

    def teardown(self) -> None:
        for info in _pools.values():
            if info.ref is not None:
                info.ref.detach()
        _pools.clear()
        _conns.clear()

    def __repr__(self) -> str:
        return f"<AsyncpgIntegration tracking {len(_pools)} pools, {len(_conns)} connections>"
