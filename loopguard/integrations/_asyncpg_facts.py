"""What the asyncpg guard knows about pools and connections, and the records it builds.

Pools have ``__slots__`` and no ``__weakref__``: they are tracked by ``id()`` with an anchor
that dies with the pool (their ``_holders`` list, replaced at creation by a list that can be
weakly referenced), and forgotten on ``close()``/``terminate()`` too.  Connections are weakly
referenced directly.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any, Optional
from urllib.parse import quote

from .. import _context, _secrets, _sites
from .._causes import likely_cause
from .._loops import LoopRef, loop_id
from .._record import Record
from .._registry import Origin, Registry, Tracked

RESOURCE_POOL = "asyncpg Pool"
RESOURCE_CONNECTION = "asyncpg Connection"
MAX_FRAMES = 40

# Where a connection came from: opened directly, by an asyncpg Pool, by SQLAlchemy's pool,
# or before install() (unknown).
ORIGIN_DIRECT = "direct"
ORIGIN_POOL = "pool"
ORIGIN_SQLALCHEMY = "sqlalchemy"
ORIGIN_UNKNOWN = "unknown"


class PoolFacts(Tracked):
    """One pool: where it was created, and whether create_pool() ran with no loop running."""

    __slots__ = ("implicit_loop", "first_use_pending")

    def __init__(self, origin: Origin, implicit_loop: bool) -> None:
        super().__init__(origin)
        # True when create_pool() ran with no loop running and no loop= argument.
        self.implicit_loop = implicit_loop
        # Such a pool is right or wrong only at its first use (``await pool``): on the loop it
        # captured (new_event_loop(), set_event_loop(), run_until_complete()) it is right.
        self.first_use_pending = implicit_loop


class ConnectionFacts(Tracked):
    """One connection: who opened it (``ORIGIN_*``) and where."""

    __slots__ = ("opened_by",)

    def __init__(self, origin: Origin, opened_by: str) -> None:
        super().__init__(origin)
        self.opened_by = opened_by


POOLS: Registry[PoolFacts] = Registry("asyncpg pools")
CONNECTIONS: Registry[ConnectionFacts] = Registry("asyncpg connections")
_UNKNOWN = Origin(None, None, None, known=False)


class HolderList(list):  # type: ignore[type-arg]
    """``Pool._holders`` as a list that can be weakly referenced: it dies with its pool."""

    __slots__ = ("__weakref__",)


def anchor_of(pool: Any) -> Any:
    """An object that lives exactly as long as ``pool`` and can be weakly referenced."""
    holders = pool._holders
    if type(holders) is list and not holders:
        pool._holders = holders = HolderList()
    if isinstance(holders, HolderList):
        return holders
    return holders[0] if holders else None  # a pool created before install(): a holder


def pool_facts(pool: Any) -> PoolFacts:
    """The pool's facts; a pool created before install() gets an entry with no site."""
    facts = POOLS.get(pool)
    if facts is None:
        facts = POOLS.add(pool, PoolFacts(_UNKNOWN, implicit_loop=False), anchor_of(pool))
    return facts


def connection_facts(conn: Any) -> ConnectionFacts:
    facts = CONNECTIONS.get(conn)
    if facts is None:
        facts = CONNECTIONS.add(conn, ConnectionFacts(_UNKNOWN, ORIGIN_UNKNOWN))
    return facts


# -- who is on the stack --------------------------------------------------------------------

_dirs: dict[str, str] = {}  # "asyncpg", "pool", "sqlalchemy", "loopguard": set by setup()


def set_directories(asyncpg_module: Any, pool_module: Any) -> None:
    _opener_kinds.clear()  # classified against the previous directories
    _dirs["asyncpg"] = os.path.dirname(asyncpg_module.__file__) + os.sep
    _dirs["pool"] = pool_module.__file__ or ""
    _dirs["loopguard"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _sqlalchemy_dir() -> Optional[str]:
    found = _dirs.get("sqlalchemy")
    if found is None:
        file = getattr(sys.modules.get("sqlalchemy"), "__file__", None)
        if not file:
            return None
        found = _dirs["sqlalchemy"] = os.path.dirname(file) + os.sep
        _opener_kinds.clear()  # classified while SQLAlchemy's files were not known
    return found


# File name -> who a frame of that file is, for ``opener``: an asyncpg Pool, SQLAlchemy, the
# user's code (``ORIGIN_DIRECT``), or "" (asyncpg's, loopguard's, the standard library's...:
# look further up).  Emptied with the sites' verdicts it is built on, and by ``setup()``.
_OPENER_INTERNAL = ""
_opener_kinds: dict[str, str] = _sites.dependent_cache()


def _opener_kind(filename: str) -> str:
    sqlalchemy_dir = _sqlalchemy_dir()
    if filename == _dirs.get("pool"):
        kind = ORIGIN_POOL
    elif sqlalchemy_dir and filename.startswith(sqlalchemy_dir):
        kind = ORIGIN_SQLALCHEMY
    elif _sites.is_internal(filename):
        kind = _OPENER_INTERNAL
    else:
        kind = ORIGIN_DIRECT
    _opener_kinds[filename] = kind
    return kind


def opener(frame: Optional[FrameType]) -> tuple[str, Optional[_sites.Site]]:
    """Who is opening a connection: an asyncpg Pool, SQLAlchemy, or the user (with the site)."""
    kinds = _opener_kinds
    for _ in range(MAX_FRAMES):
        if frame is None:
            break
        try:  # a dict read per frame: the files between are asyncpg's, known after the first
            kind = kinds[frame.f_code.co_filename]
        except KeyError:
            kind = _opener_kind(frame.f_code.co_filename)
        if kind:
            if kind == ORIGIN_DIRECT:
                return ORIGIN_DIRECT, _sites.site_of(frame, _context.rootdir)
            return kind, None
        frame = frame.f_back
    return ORIGIN_DIRECT, None


def called_by_sqlalchemy(frame: Optional[FrameType]) -> bool:
    """True when the first caller outside asyncpg and loopguard is SQLAlchemy's code."""
    sqlalchemy_dir = _sqlalchemy_dir()
    if not sqlalchemy_dir:
        return False
    ours = (_dirs["asyncpg"], _dirs["loopguard"])
    for _ in range(MAX_FRAMES):
        if frame is None:
            return False
        filename = frame.f_code.co_filename
        if not filename.startswith(ours):
            return filename.startswith(sqlalchemy_dir)
        frame = frame.f_back
    return False


def pool_operation(frame: Optional[FrameType], default: str) -> str:
    """The public Pool method the user called: the outermost frame in asyncpg's pool module."""
    name = None
    pool_file = _dirs.get("pool")
    for _ in range(MAX_FRAMES):
        if frame is None or frame.f_code.co_filename != pool_file:
            break
        name = frame.f_code.co_name
        frame = frame.f_back
    if name is None or name in ("_acquire", "__await__"):
        return default
    if name in ("__aenter__", "__aexit__") and default != "Pool.__await__":
        return default  # PoolAcquireContext: `async with pool.acquire()`
    return f"Pool.{name}"


def pool_of(conn: Any) -> Any:
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


def pool_url(pool: Any) -> str:
    args = pool._connect_args or ()
    kwargs = pool._connect_kwargs or {}
    dsn = args[0] if args else kwargs.get("dsn")
    if isinstance(dsn, str) and dsn:
        return _secrets.mask_dsn(dsn)
    return _url_from_parts(
        kwargs.get("user"), kwargs.get("host"), kwargs.get("port"), kwargs.get("database")
    )


def connection_url(conn: Any) -> str:
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


def mismatch_record(
    *,
    resource: str,
    owner_loop: Any,
    loop: Any,
    action: str,
    operation: str,
    url: str,
    pool_class: Optional[str],
    facts: Tracked,
    implicit_loop: bool,
    opened_by: str,
) -> Record:
    """LG103: ``facts`` are the pool's (for a pool or a connection acquired from it) or the
    connection's; a pool is bound when it is created, a connection when it is opened."""
    owner = LoopRef(owner_loop)
    used_during = _context.current_test()
    used = _sites.user_site(_context.rootdir, skip=3)
    site = facts.origin.site
    cause = "outside-loop" if implicit_loop else likely_cause(owner.state(), bool(used_during))
    return Record(
        code="LG103",
        action=action,
        resource=resource,
        operation=operation,
        url=url,
        pool_class=pool_class,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=facts.origin.created_during,
        created_by=facts.origin.fixture,
        bound_during=facts.origin.created_during,
        bound_at=str(site) if site else None,
        used_at=str(used) if used else None,
        used_during=used_during,
        owner_loop_id=owner.id,
        owner_loop_closed=owner.is_closed(),
        current_loop_id=loop_id(loop),
        cause=cause,
        owner_loop=owner.describe(),
        used_site=(used.filename, used.lineno) if used else None,
        created_in_loop=facts.origin.created_in_loop,
        origin=opened_by,
    )


def outside_loop_record(pool: Any, facts: PoolFacts, loop: Any) -> Record:
    """LG102: created with no loop running, first used on a loop other than the one it took."""
    site = facts.origin.site
    used = _sites.user_site(_context.rootdir, skip=3)
    return Record(
        code="LG102",
        action="warned",
        resource=RESOURCE_POOL,
        url=pool_url(pool),
        pool_class=type(pool).__name__,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=facts.origin.created_during,
        created_by=facts.origin.fixture,
        used_at=str(used) if used else None,
        used_during=_context.current_test(),
        owner_loop_id=loop_id(pool._loop),
        current_loop_id=loop_id(loop),
        cause="outside-loop",
        # The warning points at the line that called create_pool().
        used_site=(site.filename, site.lineno) if site else None,
    )
