"""The words of the asyncio-primitives guard's report (LG111)."""

from __future__ import annotations

from ._message_parts import (
    _UNKNOWN_SITE,
    _cause,
    _closing_lines,
    _created_line,
    _during,
)
from ._record import Record

# LG111: how asyncio bound the primitive (``Record.origin``), as the "bound:" line says it.
_PRIMITIVE_BINDINGS = {
    "first-wait": "first waited on",
    "moved": "moved by loopguard's warn mode",
}


def format_primitive_message(record: Record) -> str:
    """LG111: an asyncio Lock, Event, Condition, Semaphore, Queue or Barrier used on a loop
    other than the one asyncio bound it to."""
    cause = _cause(record)
    current = record.current_loop_id
    if record.action == "raised":
        outcome = "stopped before asyncio's own error."
    elif record.healed:
        outcome = (
            f"loopguard moved it to loop #{current}: its loop is not running and nothing "
            "waits on it there."
        )
    else:
        outcome = (
            "loopguard cannot move it (its loop is running, or a task of that loop is still "
            "pending), so the call goes ahead and asyncio's own error will follow."
        )
    label = f"{record.resource} ({record.name})" if record.name else record.resource
    if record.created_in_loop is None:  # no record of its creation
        unknown = "unknown: it was created before loopguard was installed " + _UNKNOWN_SITE
    elif record.created_in_loop:  # a library's, in a task: no walk up the stack (cost)
        unknown = (
            f"not recorded ({_during(record.created_during)}, in a running loop): there "
            "loopguard keeps the library's line and the line of the task's own coroutine, "
            "which is not your code"
        )
    else:
        unknown = "unknown: no line of your code was on the stack"
    created = _created_line(record, unknown)
    if record.created_via:
        created += f", by {record.created_via}"
    how = _PRIMITIVE_BINDINGS.get(record.origin or "")
    if record.origin == "at-creation":  # Python 3.9
        bound = f"when created, to asyncio.get_event_loop()'s loop: {record.owner_loop}"
    elif how is None:
        bound = f"before loopguard was installed, to {record.owner_loop}"
    else:
        where = f", at {record.bound_at}," if record.bound_at else ""
        bound = f"{how} {_during(record.bound_during)}{where} on {record.owner_loop}"
    lines = [
        # asyncio's own words, "is bound to a different event loop": code and searches that
        # match them still do.
        f"{label} used on event loop #{current} is bound to a different event loop, loop "
        f"#{record.owner_loop_id}; {outcome}",
        f"  created at:    {created}",
        f"  bound:         {bound}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)
