"""The words of each report: one formatter per kind of message, all reading a ``Record``."""

from __future__ import annotations

from typing import Callable

from ._client_messages import format_client_message, format_redis_message
from ._database_messages import (
    format_asyncpg_message,
    format_engine_message,
    format_held_message,
    format_outside_loop_message,
    format_psycopg_pool_message,
)
from ._message_parts import (
    _UNKNOWN_SITE,
    _cause,
    _closing_lines,
    _created_line,
    _during,
)
from ._primitive_messages import format_primitive_message
from ._record import Record


def format_object_message(record: Record) -> str:
    """Any other loop-bound object (``loopguard.track()``, the clients' integrations)."""
    cause = _cause(record)
    bound_at = f", at {record.bound_at}," if record.bound_at else ""
    if record.action == "raised":
        outcome = "stopped before any I/O."
    else:
        outcome = "loopguard let the call go ahead."
    label = record.name or record.url
    name = f" ({label})" if label else ""
    lines = [
        f"{record.resource}{name} used on event loop #{record.current_loop_id}, but it belongs "
        f"to loop #{record.owner_loop_id}; {outcome}",
        "  created at:    "
        + _created_line(
            record, "unknown: it was created before loopguard tracked it " + _UNKNOWN_SITE
        ),
        f"  bound:         first used {_during(record.bound_during)}{bound_at} on "
        f"{record.owner_loop}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)


_FORMATTERS: dict[str, Callable[[Record], str]] = {
    "LG101": format_engine_message,
    "LG102": format_outside_loop_message,
    "LG103": format_asyncpg_message,
    "LG108": format_client_message,
    "LG109": format_client_message,
    "LG110": format_redis_message,
    "LG111": format_primitive_message,
    "LG112": format_psycopg_pool_message,
}


# Resources whose words differ from their code's formatter.
_RESOURCE_FORMATTERS: dict[str, Callable[[Record], str]] = {
    "SQLAlchemy connection": format_held_message,
}


def format_message(record: Record) -> str:
    formatter = _RESOURCE_FORMATTERS.get(record.resource)
    if formatter is None:
        formatter = _FORMATTERS.get(record.code, format_object_message)
    return formatter(record)
