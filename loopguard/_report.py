"""Turning a detected mismatch into the error message, the warning and the log records."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from . import _context
from ._context import loop_name
from ._errors import (
    LoopMismatchError,
    LoopMismatchWarning,
    PoolCreatedOutsideLoopWarning,
    docs_link,
)
from ._log import EVENT_LOOP_MISMATCH, app_logger
from ._state import STATE

LG101 = "LG101"
LG102 = "LG102"  # an asyncpg Pool created with no running loop (it captured some other loop)
LG103 = "LG103"  # an asyncpg Pool or Connection used on a loop other than its own
EVENT_POOL_CREATED_OUTSIDE_LOOP = "loopguard.pool_created_outside_loop"
LG104 = "LG104"  # dispose() on a loop other than the pooled connections'
LG106 = "LG106"  # a loop closed while a pool still held its connections
EVENT_FOREIGN_DISPOSE = "loopguard.dispose_on_foreign_loop"
EVENT_LOOP_CLOSED_WITH_CONNECTIONS = "loopguard.loop_closed_with_connections"
EVENT_LOOP_SCOPE_MISMATCH = "loopguard.loop_scope_mismatch"  # LG105, from the pytest plugin
# Keys that help build the message and the warning but are not plain log values.
_MESSAGE_ONLY = ("owner_loop", "used_site", "created_in_loop", "origin")

CAUSES = {
    "closed-loop-test": (
        "the engine outlived the event loop it was first used on: it is cached (a module-level "
        "engine or async_sessionmaker, or an @lru_cache factory) while pytest-asyncio gives each "
        "test a new loop.",
        "dispose it when its loop ends (`await engine.dispose()` in the teardown of a fixture on "
        "the test's loop), or create it per test in a fixture, or build it with "
        "`poolclass=NullPool` for tests.",
    ),
    "closed-loop-run": (
        "the engine outlived the event loop it was first used on: a module-level or cached "
        "engine is shared by several asyncio.run() calls (one per job or command), each with a "
        "new loop.",
        "`await engine.dispose()` before each asyncio.run() job returns, or create the engine "
        "inside the job, or build it with `poolclass=NullPool`.",
    ),
    "idle-loop-test": (
        "its connections belong to a loop that is still open but not running: typically a "
        "fixture with a wider loop scope (session, package, module or class) than the test "
        "that uses the engine.",
        'run the test on the fixture\'s loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
        "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope), or give "
        "the engine fixture the test's loop scope.",
    ),
    "idle-loop-run": (
        "its connections belong to another event loop that is still open but not running.",
        "use each engine on one loop only: `await engine.dispose()` before switching loops, or "
        "one engine per loop, or `poolclass=NullPool`.",
    ),
    "running-loop": (
        "its connections belong to another event loop that is running right now, most likely "
        "in another thread.",
        "give each thread's loop its own engine, or build the engine with `poolclass=NullPool`.",
    ),
}


def likely_cause(owner_state: str, in_test: bool) -> str:
    if owner_state == "running":
        return "running-loop"
    suffix = "test" if in_test else "run"
    return f"{owner_state}-loop-{suffix}"


def _during(test: Optional[str]) -> str:
    return f"during {test}" if test else "outside any test"


def format_message(record: dict[str, Any]) -> str:
    if record["code"] == LG103:
        return format_asyncpg_message(record)
    cause, fix = CAUSES[record["cause"]]
    created = record["created_at"]
    no_loop = ", no event loop running" if record.get("created_in_loop") is False else ""
    created_line = (
        f"{created} in {record['created_in']} ({_during(record['created_during'])}{no_loop})"
        if created
        else "unknown: the engine was created before loopguard was installed "
        "(install it earlier: LOOPGUARD=1 or the pytest plugin)"
    )
    used_at = f", at {record['used_at']}" if record.get("used_at") else ""
    bound_at = f", at {record['bound_at']}," if record.get("bound_at") else ""
    lines = [
        f"{record['resource']} used on event loop #{record['current_loop_id']}, but its pooled "
        f"connections belong to loop #{record['owner_loop_id']}; "
        + (
            "stopped before any I/O."
            if record["action"] == "raised"
            else "its stale connections were released and it now belongs to the new loop."
        ),
        f"  engine:        {record['url']} ({record['pool_class']})",
        f"  created at:    {created_line}",
        f"  bound:         first connection opened {_during(record['bound_during'])}{bound_at} on "
        f"{record['owner_loop']}",
        f"  used now:      {_during(record['used_during'])} on loop #{record['current_loop_id']}"
        f"{loop_name(record['current_loop_id'])}{used_at}",
        f"  likely cause:  {cause}",
        f"  fix:           {fix}",
        f"  (Background on this error at: {docs_link(record['code'])}, code {record['code']})",
    ]
    return "\n".join(lines)


def log_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record as logged: only plain values, no message-only helpers.

    In a pytest-xdist worker, ``worker`` (its id, e.g. ``gw0``) is added.
    """
    fields = {k: v for k, v in record.items() if k not in _MESSAGE_ONLY}
    if _context.worker is not None:
        fields.setdefault("worker", _context.worker)
    return fields


def emit(record: dict[str, Any], event: str = EVENT_LOOP_MISMATCH, listeners: bool = True) -> None:
    """Send one record to structlog, the JSON-lines file and (records about an engine or a
    pool) the plugin's listeners."""
    fields = log_fields(record)
    level = "error" if record["action"] == "raised" else "warning"
    getattr(app_logger(), level)(event, **fields)
    sink = STATE.sink
    if sink is not None:
        sink.emit(level, event, fields)
    for listener in list(STATE.listeners) if listeners else ():
        listener({"event": event, **fields})


def raise_mismatch(record: dict[str, Any]) -> LoopMismatchError:
    message = format_message(record)
    emit(record)
    return LoopMismatchError(message, log_fields(record))


def warn_mismatch(record: dict[str, Any]) -> None:
    message = format_message(record)
    emit(record)
    warning = LoopMismatchWarning(message)
    where = record.get("used_site")
    if where is not None:
        # Point the warning at the user's line, not at SQLAlchemy's pool internals.
        warnings.warn_explicit(warning, LoopMismatchWarning, where[0], where[1])
    else:
        warnings.warn(warning, stacklevel=3)


# -- raw asyncpg (LG102, LG103) -------------------------------------------------------------

_OUTSIDE_LOOP = (
    "asyncpg.create_pool() was called with no event loop running (at import time, in a sync "
    "function or fixture, or before asyncio.run()), so the pool captured the loop "
    "asyncio.get_event_loop() returned, not the loop that later uses it.",
    "create the pool inside the loop that uses it: `pool = await asyncpg.create_pool(...)` in "
    "the coroutine (or async fixture) that needs it, and `await pool.close()` before that loop "
    "ends.",
)

ASYNCPG_CAUSES = {
    ("pool", "outside-loop"): _OUTSIDE_LOOP,
    ("pool", "closed-loop-test"): (
        "the pool outlived the event loop it was created on: it is kept in a module global or a "
        "cache (created on the first test's loop) while pytest-asyncio gives each test a new "
        "loop.",
        "create the pool in an async fixture on the test's loop and `await pool.close()` in its "
        "teardown, or run every test that uses it on one loop (loop_scope=).",
    ),
    ("pool", "closed-loop-run"): (
        "the pool outlived the event loop it was created on: a module-global pool created "
        "during one asyncio.run() is used by a later asyncio.run() (one per job or command), "
        "on a new loop.",
        "create the pool inside each job and `await pool.close()` before the job returns, or "
        "run every job on one long-lived loop.",
    ),
    ("pool", "idle-loop-test"): (
        "it belongs to a loop that is still open but not running: typically a fixture with a "
        "wider loop scope (session, package, module or class) than the test that uses the pool.",
        'run the test on the fixture\'s loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
        "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope), or give "
        "the pool fixture the test's loop scope.",
    ),
    ("pool", "idle-loop-run"): (
        "it belongs to another event loop that is still open but not running.",
        "use each pool on one loop only: create one pool per loop, and close it on that loop.",
    ),
    ("pool", "running-loop"): (
        "it belongs to another event loop that is running right now, most likely in another "
        "thread.",
        "give each thread's loop its own pool, or run the work on the pool's loop "
        "(asyncio.run_coroutine_threadsafe()).",
    ),
    ("connection", "outside-loop"): _OUTSIDE_LOOP,
    ("connection", "closed-loop-test"): (
        "the connection outlived the event loop it was opened on: it is kept in a module global, "
        "a cache or a wider-scoped fixture while pytest-asyncio gives each test a new loop.",
        "open (or acquire) it in an async fixture on the test's loop and close (or release) it "
        "in the fixture's teardown.",
    ),
    ("connection", "closed-loop-run"): (
        "the connection outlived the event loop it was opened on: it was opened during one "
        "asyncio.run() and is used by a later one, on a new loop.",
        "open (or acquire) the connection inside each job and close (or release) it before the "
        "job returns.",
    ),
    ("connection", "idle-loop-test"): (
        "it belongs to a loop that is still open but not running: typically a fixture with a "
        "wider loop scope (session, package, module or class) than the test that uses it.",
        'run the test on the fixture\'s loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
        "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope), or give "
        "the connection fixture the test's loop scope.",
    ),
    ("connection", "idle-loop-run"): (
        "it belongs to another event loop that is still open but not running.",
        "use each connection on the loop that opened it; open another one for the new loop.",
    ),
    ("connection", "running-loop"): (
        "it belongs to another event loop that is running right now, most likely in another "
        "thread.",
        "give each thread's loop its own connection (or pool), or run the work on the "
        "connection's loop (asyncio.run_coroutine_threadsafe()).",
    ),
}

_UNKNOWN_SITE = "(install it earlier: LOOPGUARD=1 or the pytest plugin)"


def _asyncpg_created_line(record: dict[str, Any], kind: str) -> str:
    created = record["created_at"]
    if created:
        no_loop = ", no event loop running" if record.get("created_in_loop") is False else ""
        line = f"{created} in {record['created_in']} ({_during(record['created_during'])}{no_loop})"
        if kind == "connection" and record.get("origin") == "pool":
            line += ": the asyncpg Pool it belongs to"
        return line
    origin = record.get("origin")
    if origin == "sqlalchemy":
        return "opened by a SQLAlchemy engine's pool (its asyncpg dialect)"
    if kind == "pool" or origin == "pool":
        return f"unknown: the pool was created before loopguard was installed {_UNKNOWN_SITE}"
    return f"unknown: the connection was opened before loopguard was installed {_UNKNOWN_SITE}"


def format_asyncpg_message(record: dict[str, Any]) -> str:
    """LG103: an asyncpg Pool or Connection used on a loop other than its own."""
    kind = "pool" if record["resource"].endswith("Pool") else "connection"
    cause, fix = ASYNCPG_CAUSES[(kind, record["cause"])]
    owner, current = record["owner_loop_id"], record["current_loop_id"]
    if kind == "pool":
        belongs = f"it belongs to loop #{owner}, the loop it captured at create_pool()"
        bound = (
            "captured from asyncio.get_event_loop() at create_pool() (no loop was running):"
            if record["cause"] == "outside-loop"
            else "captured at create_pool() on"
        )
    else:
        belongs = f"it belongs to loop #{owner}, the loop it was opened on"
        bound = "opened" + (" by its pool" if record.get("origin") == "pool" else "") + " on"
    if record["action"] == "raised":
        outcome = "stopped before any I/O."
    else:
        outcome = (
            "loopguard cannot move it to another loop, so the call goes ahead and asyncpg's "
            "own error will follow."
        )
    if kind == "pool":
        what = f"  pool:          {record['url']} ({record['pool_class']})"
    else:
        member = " (acquired from an asyncpg Pool)" if record.get("origin") == "pool" else ""
        what = f"  connection:    {record['url']}{member}"
    used_at = f", at {record['used_at']}" if record.get("used_at") else ""
    lines = [
        f"{record['resource']} used on event loop #{current}, but {belongs}; {outcome}",
        what,
        f"  created at:    {_asyncpg_created_line(record, kind)}",
        f"  bound:         {bound} {record['owner_loop']}",
        f"  used now:      {_during(record['used_during'])} on loop #{current}"
        f"{loop_name(current)}{used_at} ({record['operation']})",
        f"  likely cause:  {cause}",
        f"  fix:           {fix}",
        f"  (Background on this error at: {docs_link(record['code'])}, code {record['code']})",
    ]
    return "\n".join(lines)


def format_outside_loop_message(record: dict[str, Any]) -> str:
    """LG102: the pool captured asyncio.get_event_loop()'s loop at creation."""
    created = record["created_at"]
    created_line = (
        f"{created} in {record['created_in']} ({_during(record['created_during'])})"
        if created
        else "unknown (no frame of your code on the stack)"
    )
    owner = record["owner_loop_id"]
    lines = [
        f"asyncpg Pool created with no event loop running: it captured loop #{owner} from "
        "asyncio.get_event_loop() and works on that loop only.",
        f"  pool:          {record['url']} ({record['pool_class']})",
        f"  created at:    {created_line}",
        "  likely cause:  asyncpg.create_pool() was called outside async code (at import time, "
        "in a sync function or fixture, or before asyncio.run()); asyncio.run() and "
        "pytest-asyncio run your coroutines on a new loop, where this pool fails on first use.",
        "  fix:           create the pool inside the loop that uses it (`pool = await "
        "asyncpg.create_pool(...)` in the coroutine or async fixture that needs it); if you run "
        f"loop #{owner} yourself, pass it as `loop=` to say so.",
        f"  (Background on this warning at: {docs_link(record['code'])}, code {record['code']})",
    ]
    return "\n".join(lines)


def warn_pool_created_outside_loop(record: dict[str, Any]) -> None:
    """LG102 in every mode: a record and a PoolCreatedOutsideLoopWarning at the user's line."""
    message = format_outside_loop_message(record)
    emit(record, EVENT_POOL_CREATED_OUTSIDE_LOOP)
    warning = PoolCreatedOutsideLoopWarning(message)
    where = record.get("used_site")
    if where is not None:
        warnings.warn_explicit(warning, PoolCreatedOutsideLoopWarning, where[0], where[1])
    else:
        warnings.warn(warning, stacklevel=4)
