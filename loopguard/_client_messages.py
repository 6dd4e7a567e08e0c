"""The words of the network clients' reports: an httpx AsyncClient or aiohttp ClientSession
(LG108, LG109), a redis.asyncio client (LG110)."""

from __future__ import annotations

from ._message_parts import (
    _UNKNOWN_SITE,
    _cause,
    _closing_lines,
    _created_line,
    _during,
)
from ._record import Record


def _client_line(record: Record, label: str, cls: str) -> str:
    built = f" built by {record.name}" if record.name else ""
    url = f" for {record.url}" if record.url else ""
    return f"  {label + ':':<15}{cls}{built}{url}"


def format_client_message(record: Record) -> str:
    """LG108 (an httpx AsyncClient's pool) and LG109 (an aiohttp ClientSession)."""
    cause = _cause(record)
    owner, current = record.owner_loop_id, record.current_loop_id
    httpx = record.code == "LG108"
    if httpx:
        belongs = f"its pooled connections belong to loop #{owner}"
        bound_at = f", at {record.bound_at}," if record.bound_at else ""
        bound = f"first request sent {_during(record.bound_during)}{bound_at} on "
        bound += record.owner_loop
        what = _client_line(record, "client", "httpx.AsyncClient")
    else:
        belongs = f"it belongs to loop #{owner}, the loop it was created on"
        implicit = record.cause == "outside-loop"
        bound = (
            "when it was created with no loop running, to asyncio.get_event_loop()'s "
            if implicit
            else "when it was created, to "
        ) + record.owner_loop
        what = _client_line(record, "session", "aiohttp.ClientSession")
    if record.action == "raised":
        outcome = "stopped before any I/O."
    elif record.released is not None:
        outcome = (
            f"its {record.released} pooled connection(s) of loop #{owner} were closed without "
            f"I/O ({record.sockets_closed} socket(s)), and it now belongs to loop #{current}."
        )
    elif httpx:
        outcome = (
            "loopguard cannot drop them safely now (one is in use, or their loop is running), "
            "so the request goes ahead."
        )
    else:
        outcome = (
            "loopguard cannot move a session to another loop, so the request goes ahead and "
            "aiohttp's own error will follow."
        )
    unknown = "unknown: it was created before loopguard was installed " + _UNKNOWN_SITE
    if httpx:
        unknown = (
            "unknown: it was created before loopguard was installed, or by httpcore without an "
            "httpx.AsyncClient " + _UNKNOWN_SITE
        )
    lines = [
        f"{record.resource} used on event loop #{current}, but {belongs}; {outcome}",
        what,
        f"  created at:    {_created_line(record, unknown)}",
        f"  bound:         {bound}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)


def format_redis_message(record: Record) -> str:
    """LG110: a redis.asyncio client (its pool) or connection used on another loop."""
    cause = _cause(record)
    owner, current = record.owner_loop_id, record.current_loop_id
    client = record.resource.endswith("client")
    if record.action == "raised":
        outcome = "stopped before any I/O."
    elif record.released is not None:
        outcome = (
            f"its connections of loop #{owner} were closed without I/O, and it now belongs "
            f"to loop #{current}."
        )
    else:
        outcome = (
            "loopguard cannot close connections of a running loop (or of a parent process) "
            "from here, so the call goes ahead and redis-py's own error may follow."
        )
    if client:
        what = f"  client:        {record.url} ({record.pool_class})"
        created = _created_line(
            record,
            "unknown: the client was created before loopguard was installed " + _UNKNOWN_SITE,
        )
    else:
        what = f"  connection:    {record.url}"
        created = "unknown: it connected before loopguard was installed " + _UNKNOWN_SITE
    if record.bound_during or record.bound_at:
        bound_at = f", at {record.bound_at}," if record.bound_at else ""
        bound = f"first connection opened {_during(record.bound_during)}{bound_at} on"
    else:
        bound = "connected (where and when: not seen by loopguard) on"
    lines = [
        f"{record.resource} used on event loop #{current}, but its connections belong to "
        f"loop #{owner}; {outcome}",
        what,
        f"  created at:    {created}",
        f"  bound:         {bound} {record.owner_loop}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)
