"""The words of the database guards' reports: a SQLAlchemy engine or held connection
(LG101), an asyncpg pool or connection (LG102, LG103), a psycopg_pool pool (LG112)."""

from __future__ import annotations

from ._loops import loop_name
from ._message_parts import (
    _UNKNOWN_SITE,
    _background,
    _cause,
    _closing_lines,
    _created_line,
    _during,
)
from ._record import Record


def format_engine_message(record: Record) -> str:
    """LG101: a pooled SQLAlchemy engine used on a loop other than its connections'."""
    cause = _cause(record)
    bound_at = f", at {record.bound_at}," if record.bound_at else ""
    outcome = (
        "stopped before any I/O."
        if record.action == "raised"
        else "its stale connections were released and it now belongs to the new loop."
    )
    lines = [
        f"{record.resource} used on event loop #{record.current_loop_id}, but its pooled "
        f"connections belong to loop #{record.owner_loop_id}; {outcome}",
        f"  {'pool:  ' if record.resource == 'SQLAlchemy pool' else 'engine:'}        "
        f"{record.url} ({record.pool_class})",
        "  created at:    "
        + _created_line(
            record,
            "unknown: the engine was created before loopguard was installed " + _UNKNOWN_SITE,
        ),
        f"  bound:         first connection opened {_during(record.bound_during)}{bound_at} on "
        f"{record.owner_loop}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)


def format_held_message(record: Record) -> str:
    """LG101 for a connection held open (AsyncConnection, AsyncSession, stream) and used on a
    loop other than the one it was checked out on."""
    cause = _cause(record)
    bound_at = f" (first opened at {record.bound_at})" if record.bound_at else ""
    if record.action == "raised":
        outcome = "stopped before any I/O; it stays usable on its own loop."
    elif record.released:
        outcome = (
            "loopguard closed it without I/O on its loop and invalidated it: SQLAlchemy's "
            "'connection is closed' error follows, and after a rollback the connection is "
            "opened again on this loop."
        )
    else:
        outcome = "its loop runs in another thread, so loopguard let the call go ahead."
    lines = [
        f"SQLAlchemy connection used on event loop #{record.current_loop_id}, but it was "
        f"checked out on loop #{record.owner_loop_id} and belongs to it; {outcome}",
        f"  engine:        {record.url} ({record.pool_class})",
        "  created at:    "
        + _created_line(
            record,
            "unknown: the engine was created before loopguard was installed " + _UNKNOWN_SITE,
        ),
        f"  checked out:   {_during(record.checked_out_during)} on {record.owner_loop}{bound_at}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)


def _asyncpg_created_line(record: Record, kind: str) -> str:
    if record.created_at:
        line = _created_line(record, "")
        if kind == "connection" and record.origin == "pool":
            line += ": the asyncpg Pool it belongs to"
        return line
    if record.origin == "sqlalchemy":
        return "opened by a SQLAlchemy engine's pool (its asyncpg dialect)"
    if kind == "pool" or record.origin == "pool":
        return f"unknown: the pool was created before loopguard was installed {_UNKNOWN_SITE}"
    return f"unknown: the connection was opened before loopguard was installed {_UNKNOWN_SITE}"


def format_asyncpg_message(record: Record) -> str:
    """LG103: an asyncpg Pool or Connection used on a loop other than its own."""
    kind = "pool" if record.resource.endswith("Pool") else "connection"
    cause = _cause(record)
    owner, current = record.owner_loop_id, record.current_loop_id
    if kind == "pool":
        belongs = f"it belongs to loop #{owner}, the loop it captured at create_pool()"
        bound = (
            "captured from asyncio.get_event_loop() at create_pool() (no loop was running):"
            if record.cause == "outside-loop"
            else "captured at create_pool() on"
        )
        what = f"  pool:          {record.url} ({record.pool_class})"
    else:
        belongs = f"it belongs to loop #{owner}, the loop it was opened on"
        bound = "opened" + (" by its pool" if record.origin == "pool" else "") + " on"
        member = " (acquired from an asyncpg Pool)" if record.origin == "pool" else ""
        what = f"  connection:    {record.url}{member}"
    if record.action == "raised":
        outcome = "stopped before any I/O."
    else:
        outcome = (
            "loopguard cannot move it to another loop, so the call goes ahead and asyncpg's "
            "own error will follow."
        )
    lines = [
        f"{record.resource} used on event loop #{current}, but {belongs}; {outcome}",
        what,
        f"  created at:    {_asyncpg_created_line(record, kind)}",
        f"  bound:         {bound} {record.owner_loop}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)


def format_outside_loop_message(record: Record) -> str:
    """LG102: the pool captured asyncio.get_event_loop()'s loop at creation, and its first use
    is on another loop."""
    owner, current = record.owner_loop_id, record.current_loop_id
    used_at = f", at {record.used_at}" if record.used_at else ""
    lines = [
        f"asyncpg Pool created with no event loop running is first used on loop #{current}, "
        f"but it captured loop #{owner} from asyncio.get_event_loop() and works on that loop "
        "only.",
        f"  pool:          {record.url} ({record.pool_class})",
        "  created at:    "
        + (
            f"{record.created_at} in {record.created_in} ({_during(record.created_during)})"
            if record.created_at
            else "unknown (no frame of your code on the stack)"
        ),
        f"  first used:    {_during(record.used_during)} on loop #{current}"
        f"{loop_name(current) if current is not None else ''}{used_at}",
        "  likely cause:  asyncpg.create_pool() was called outside async code (at import time, "
        "in a sync function or fixture, or before asyncio.run()); asyncio.run() and "
        "pytest-asyncio run your coroutines on a new loop, where this pool cannot work.",
        "  fix:           create the pool inside the loop that uses it (`pool = await "
        "asyncpg.create_pool(...)` in the coroutine or async fixture that needs it); a program "
        "that runs its loop itself makes it the current loop (asyncio.set_event_loop()) or "
        "passes it as `loop=` before create_pool().",
        _background(record, "warning"),
    ]
    return "\n".join(lines)


def format_psycopg_pool_message(record: Record) -> str:
    """LG112: a psycopg_pool AsyncConnectionPool used on a loop other than the one that
    opened it."""
    cause = _cause(record)
    owner = record.owner_loop_id
    if record.action == "raised":
        outcome = "stopped before any I/O."
    else:
        outcome = (
            f"loopguard cannot move a pool to another loop (its worker tasks run on loop "
            f"#{owner}), so the call goes ahead, as without loopguard: it may hang until "
            "PoolTimeout."
        )
    name = f" {record.name!r}" if record.name else ""
    target = record.url or "(its conninfo is computed when it connects)"
    bound_at = f", at {record.bound_at}," if record.bound_at else ""
    bound = (
        f"opened {_during(record.bound_during)}{bound_at} on {record.owner_loop}"
        if record.bound_during or record.bound_at
        else f"opened before loopguard was installed, on {record.owner_loop}"
    )
    lines = [
        f"{record.resource} used on event loop #{record.current_loop_id}, but it belongs to "
        f"loop #{owner}, the loop that opened it; {outcome}",
        f"  pool:          {target} ({record.pool_class}{name})",
        "  created at:    "
        + _created_line(
            record, "unknown: the pool was created before loopguard was installed " + _UNKNOWN_SITE
        ),
        f"  bound:         {bound}",
        *_closing_lines(record, cause),
    ]
    return "\n".join(lines)
