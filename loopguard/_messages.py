"""The words of each report: one formatter per kind of message, all reading a ``Record``."""

from __future__ import annotations

from typing import Callable, Optional

from ._cause_wording import Cause
from ._causes import cause_for
from ._errors import background
from ._loops import loop_name
from ._record import Record

_UNKNOWN_SITE = "(install it earlier: LOOPGUARD=1 or the pytest plugin)"


def _during(test: Optional[str]) -> str:
    return f"during {test}" if test else "outside any test"


def _cause(record: Record) -> Cause:
    cause = cause_for(record.resource, record.cause or "", record.created_by)
    return cause or Cause("unknown.", "see the documentation.")


def _used_now(record: Record) -> str:
    current = record.current_loop_id
    used_at = f", at {record.used_at}" if record.used_at else ""
    operation = f" ({record.operation})" if record.operation else ""
    return (
        f"  used now:      {_during(record.used_during)} on loop #{current}"
        f"{loop_name(current) if current is not None else ''}{used_at}{operation}"
    )


def _background(record: Record, what: str = "error") -> str:
    return "  " + background(record.code, what)


def _created_line(record: Record, unknown: str) -> str:
    if not record.created_at:
        return unknown
    no_loop = ", no event loop running" if record.created_in_loop is False else ""
    return f"{record.created_at} in {record.created_in} ({_during(record.created_during)}{no_loop})"


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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
    ]
    return "\n".join(lines)


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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
    ]
    return "\n".join(lines)


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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
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
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
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
