"""One report of a loop misuse: an immutable record with its message, log fields and error."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from . import _context
from ._codes import CODES, Code
from ._errors import LoopMismatchError

# Logged only when they have a value: they belong to some actions or resources only.
OPTIONAL_FIELDS = frozenset(
    {
        "name",
        "operation",
        "created_by",
        "created_via",
        "checked_out_during",
        "released",
        "sockets_closed",
        "held",
        "healed",
    }
)


@dataclasses.dataclass(frozen=True)
class Record:
    code: str
    action: str  # raised, warned, released, reported
    resource: str  # "SQLAlchemy AsyncEngine", "asyncpg Pool", ...
    url: Optional[str] = None  # without secrets
    name: Optional[str] = None  # what loopguard.track(name=...) calls the object
    pool_class: Optional[str] = None
    created_at: Optional[str] = None  # path:line
    created_in: Optional[str] = None  # function
    created_during: Optional[str] = None  # test (phase)
    created_by: Optional[str] = None  # the fixture whose setup created it (_context)
    created_via: Optional[str] = None  # the library code that created it (module:line in function)
    bound_during: Optional[str] = None
    bound_at: Optional[str] = None  # path:line in function
    checked_out_during: Optional[str] = None  # a held connection: the test that checked it out
    used_at: Optional[str] = None
    used_during: Optional[str] = None
    operation: Optional[str] = None  # the method called, e.g. Pool.acquire
    owner_loop_id: Optional[int] = None
    owner_loop_closed: Optional[bool] = None
    current_loop_id: Optional[int] = None
    cause: Optional[str] = None
    released: Optional[int] = None
    sockets_closed: Optional[int] = None
    held: Optional[int] = None
    healed: Optional[bool] = None  # warn mode, asyncio primitives: moved to the current loop
    # For the message and the warning only, never logged:
    owner_loop: str = ""  # the owning loop described: "loop #1, which is now closed"
    used_site: Optional[tuple[str, int]] = None  # (filename, line) the warning points at
    created_in_loop: Optional[bool] = None
    origin: Optional[str] = None  # asyncpg: direct, pool, sqlalchemy, unknown

    @property
    def spec(self) -> Code:
        return CODES[self.code]

    @property
    def event(self) -> str:
        return self.spec.event

    @property
    def level(self) -> str:
        return self.spec.level(self.action)

    def replace(self, **changes: Any) -> Record:
        return dataclasses.replace(self, **changes)

    def log_fields(self) -> dict[str, Any]:
        """The record as logged: plain values in the code's order; ``worker`` under xdist."""
        fields: dict[str, Any] = {}
        for name in self.spec.fields:
            value = getattr(self, name)
            if value is not None or name not in OPTIONAL_FIELDS:
                fields[name] = value
        if _context.worker is not None:
            fields["worker"] = _context.worker
        return fields

    def message(self) -> str:
        from ._messages import format_message

        return format_message(self)

    def error(self) -> LoopMismatchError:
        return LoopMismatchError(self.message(), self.log_fields())
