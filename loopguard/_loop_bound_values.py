"""Which values belong to one event loop (LG105): what in a fixture's value is loop-bound, in
words and by kind (the kind decides what happens to the tests that use it).
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple, Optional

_MAX_CONTAINER_ITEMS = 16


def _instance_of(value: Any, module_name: str, *names: str) -> bool:
    """``isinstance`` against classes of a module, only if something imported it already."""
    module = sys.modules.get(module_name)
    if module is None:
        return False
    classes = tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))
    return bool(classes) and isinstance(value, classes)


class Bound(NamedTuple):
    """What in a fixture's value belongs to one event loop: in words, and which kind of
    thing it is (the kind decides what happens to the tests, ``OUTCOMES``)."""

    text: str  # "a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)"
    kind: str  # ENGINE, ASYNCPG, ASYNCPG_CONNECTION, PSYCOPG_CONNECTION or OTHER

    def within(self, prefix: str) -> Bound:
        return Bound(f"{prefix}{self.text}", self.kind)


# The kinds of loop-bound values, by what their first use on another loop does.
ENGINE = "engine"  # checked out from its pool: LG101
ASYNCPG = "asyncpg"  # a raw asyncpg Pool or Connection: LG103
ASYNCPG_CONNECTION = "asyncpg-connection"  # a SQLAlchemy connection held open, over asyncpg
PSYCOPG_CONNECTION = "psycopg-connection"  # psycopg: its I/O follows the running loop
OTHER = "other"


def loop_bound(value: Any, nested: bool = False) -> Optional[str]:
    """What in ``value`` belongs to one event loop, in words; None when nothing does."""
    bound = bound_to_loop(value, nested)
    return bound.text if bound is not None else None


def bound_to_loop(value: Any, nested: bool = False) -> Optional[Bound]:
    """What in ``value`` belongs to one event loop; None when nothing does.

    ``a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)``, ``an asyncpg Pool``, ...
    A NullPool engine opens a new connection on the running loop at every checkout: it may
    cross loops, so it (and sessions and sessionmakers bound to it) are not loop-bound.
    """
    asa = "sqlalchemy.ext.asyncio"
    if _instance_of(value, asa, "AsyncEngine"):
        pool = value.sync_engine.pool
        if _instance_of(pool, "sqlalchemy.pool", "NullPool"):
            return None
        return Bound(f"a pooled SQLAlchemy AsyncEngine ({type(pool).__name__})", ENGINE)
    if _instance_of(value, asa, "AsyncConnection"):
        if getattr(value, "sync_connection", None) is None:  # not connected yet
            return bound_to_loop(value.engine, nested)
        driver = str(getattr(getattr(value.engine, "dialect", None), "driver", ""))
        kind = {"asyncpg": ASYNCPG_CONNECTION, "psycopg": PSYCOPG_CONNECTION}.get(driver, OTHER)
        return Bound("a SQLAlchemy AsyncConnection", kind)
    if _instance_of(value, asa, "AsyncSession"):
        bind = getattr(value, "bind", None)  # SQLAlchemy 2.0 sets it only when given
        bound = bound_to_loop(bind, True) if bind is not None else None
        return bound.within("a SQLAlchemy AsyncSession bound to ") if bound else None
    kw = getattr(value, "kw", None)
    if type(value).__name__ in ("async_sessionmaker", "sessionmaker") and isinstance(kw, dict):
        bind = kw.get("bind")
        bound = bound_to_loop(bind, True) if bind is not None else None
        return bound.within(f"an {type(value).__name__} bound to ") if bound else None
    if _instance_of(value, "asyncpg", "Pool"):
        return Bound("an asyncpg Pool", ASYNCPG)
    if _instance_of(value, "asyncpg", "Connection"):
        return Bound("an asyncpg Connection", ASYNCPG)
    if _instance_of(value, "asyncpg.pool", "PoolConnectionProxy"):
        return Bound("an asyncpg Connection acquired from a Pool", ASYNCPG)
    if _instance_of(value, "psycopg", "AsyncConnection"):
        return Bound("a psycopg AsyncConnection", PSYCOPG_CONNECTION)
    if _instance_of(value, "psycopg_pool", "AsyncConnectionPool"):
        return Bound("a psycopg_pool AsyncConnectionPool", OTHER)
    if not nested and isinstance(value, (tuple, list, dict)):
        items = list(value.values() if isinstance(value, dict) else value)
        for element in items[:_MAX_CONTAINER_ITEMS]:
            bound = bound_to_loop(element, True)
            if bound:
                return bound.within(f"a {type(value).__name__} holding ")
    return None
