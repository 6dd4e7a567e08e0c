"""Every code loopguard reports, in one table: its event, level, warning, docs anchor, the
fields its records log, and the causes and fixes its messages give.

The error, the warning, the log record, the pytest summary, ``loopguard report`` and the
docs all read this table; a new guard adds its code here and nowhere else.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from ._cause_wording import Cause
from ._causes import cause_for
from ._errors import (
    LoopguardWarning,
    LoopMismatchWarning,
    LoopScopeMismatchWarning,
    PoolCreatedOutsideLoopWarning,
)
from ._errors import docs_link as docs_link  # re-exported: the docs link codes through here
from ._primitive_causes import PRIMITIVE_NOUNS

EVENT_LOOP_MISMATCH = "loopguard.loop_mismatch"

# The fields of a mismatch record, in the order they are logged.
MISMATCH_FIELDS = (
    "code",
    "action",
    "resource",
    "operation",
    "url",
    "pool_class",
    "created_at",
    "created_in",
    "created_during",
    "created_by",
    "bound_during",
    "bound_at",
    "used_at",
    "used_during",
    "owner_loop_id",
    "owner_loop_closed",
    "current_loop_id",
    "cause",
    "released",
    "sockets_closed",
)
# LG101 also names the test that checked a held connection out (logged only for those).
ENGINE_FIELDS = tuple(
    field
    for name in MISMATCH_FIELDS
    for field in ((name, "checked_out_during") if name == "bound_at" else (name,))
)
# LG102: a pool created with no loop running, at its first use.
CREATION_FIELDS = (
    "code",
    "action",
    "resource",
    "url",
    "pool_class",
    "created_at",
    "created_in",
    "created_during",
    "created_by",
    "used_at",
    "used_during",
    "owner_loop_id",
    "current_loop_id",
    "cause",
)
# Objects registered with loopguard.track(): a name where a database has its URL.
OBJECT_FIELDS = tuple(
    "name" if field == "url" else field for field in MISMATCH_FIELDS if field != "pool_class"
)
# psycopg_pool pools (LG112): the pool's ``name`` besides its URL and class.
_AFTER_URL = MISMATCH_FIELDS.index("url") + 1
PSYCOPG_POOL_FIELDS = (*MISMATCH_FIELDS[:_AFTER_URL], "name", *MISMATCH_FIELDS[_AFTER_URL:])
# HTTP clients (LG108 httpx, LG109 aiohttp): ``url`` is the origin of the client's base_url
# (``scheme://host:port``), ``name`` the library class that built the client, if one did.
CLIENT_FIELDS = tuple(
    "name" if field == "pool_class" else field for field in MISMATCH_FIELDS if field != "name"
)
# LG111: asyncio's own primitives.  ``name`` is a subclass's name (asyncpg's pool queue),
# ``created_via`` the library code that created it, ``healed`` what warn mode did.
PRIMITIVE_FIELDS = (
    "code",
    "action",
    "resource",
    "operation",
    "name",
    "created_at",
    "created_in",
    "created_during",
    "created_by",
    "created_via",
    "bound_during",
    "bound_at",
    "used_at",
    "used_during",
    "owner_loop_id",
    "owner_loop_closed",
    "current_loop_id",
    "cause",
    "healed",
)
# Records about a pool's connections rather than a use of it (LG104, LG106).
POOL_EVENT_FIELDS = (
    "code",
    "action",
    "resource",
    "url",
    "pool_class",
    "created_at",
    "created_in",
    "created_during",
    "created_by",
    "bound_during",
    "bound_at",
    "used_at",
    "used_during",
    "owner_loop_id",
    "owner_loop_closed",
    "current_loop_id",
    "released",
    "sockets_closed",
    "held",
)


class Code(NamedTuple):
    code: str
    title: str  # what happened, in a sentence fragment (docs tables, `loopguard explain`)
    event: str  # the structlog event name of its records
    warning: Optional[type[LoopguardWarning]]  # what warn mode (or the check itself) emits
    raises: bool  # raise mode raises LoopMismatchError
    fields: tuple[str, ...]  # the logged fields, in order; absent values are left out
    resources: tuple[str, ...]  # the resources it is reported for

    @property
    def anchor(self) -> str:
        return docs_link(self.code)

    def level(self, action: str) -> str:
        return "error" if action == "raised" else "warning"

    def cause(self, resource: str, key: str) -> Optional[Cause]:
        return cause_for(resource, key)


CODES: dict[str, Code] = {
    code.code: code
    for code in (
        Code(
            "LG101",
            "a pooled SQLAlchemy AsyncEngine used on an event loop other than its connections'",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            ENGINE_FIELDS,
            ("SQLAlchemy AsyncEngine", "SQLAlchemy pool", "SQLAlchemy connection"),
        ),
        Code(
            "LG102",
            "an asyncpg pool created with no event loop running is first used on another loop",
            "loopguard.pool_created_outside_loop",
            PoolCreatedOutsideLoopWarning,
            False,
            CREATION_FIELDS,
            ("asyncpg Pool",),
        ),
        Code(
            "LG103",
            "an asyncpg pool or connection used on an event loop other than its own",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            MISMATCH_FIELDS,
            ("asyncpg Pool", "asyncpg Connection"),
        ),
        Code(
            "LG104",
            "dispose() on a loop other than the pooled connections' (or outside any loop)",
            "loopguard.dispose_on_foreign_loop",
            None,
            False,
            POOL_EVENT_FIELDS,
            ("SQLAlchemy AsyncEngine",),
        ),
        Code(
            "LG105",
            "a fixture hands a loop-bound engine, pool or connection to tests on another "
            "loop scope",
            "loopguard.loop_scope_mismatch",
            LoopScopeMismatchWarning,
            False,
            (
                "code",
                "fixture",
                "fixture_at",
                "fixture_loop_scope",
                "test_loop_scope",
                "value",
                "used_during",
                "tests",
            ),
            (),
        ),
        Code(
            "LG106",
            "a loop closed while a pool still held connections bound to it",
            "loopguard.loop_closed_with_connections",
            None,
            False,
            POOL_EVENT_FIELDS,
            ("SQLAlchemy AsyncEngine",),
        ),
        Code(
            "LG107",
            "an object registered with loopguard.track() used on an event loop other than its own",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            OBJECT_FIELDS,
            (),
        ),
        Code(
            "LG108",
            "an httpx AsyncClient used on an event loop other than its pooled connections'",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            CLIENT_FIELDS,
            ("httpx AsyncClient",),
        ),
        Code(
            "LG109",
            "an aiohttp ClientSession used on an event loop other than its own",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            CLIENT_FIELDS,
            ("aiohttp ClientSession",),
        ),
        Code(
            "LG110",
            "a redis.asyncio client or connection used on an event loop other than its "
            "connections'",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            MISMATCH_FIELDS,
            ("redis.asyncio client", "redis.asyncio connection"),
        ),
        Code(
            "LG111",
            "an asyncio Lock, Event, Condition, Semaphore, Queue or Barrier used on an event loop "
            "other than the one asyncio bound it to",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            PRIMITIVE_FIELDS,
            tuple(PRIMITIVE_NOUNS),
        ),
        Code(
            "LG112",
            "a psycopg_pool AsyncConnectionPool used on an event loop other than the one that "
            "opened it",
            EVENT_LOOP_MISMATCH,
            LoopMismatchWarning,
            True,
            PSYCOPG_POOL_FIELDS,
            ("psycopg_pool AsyncConnectionPool",),
        ),
    )
}

EVENTS = {code.event for code in CODES.values()}


def primitive_noun(resource: Optional[str]) -> Optional[str]:
    """ "lock", "queue", ... for an asyncio primitive (summaries count them so); else None."""
    return PRIMITIVE_NOUNS.get(resource or "")
