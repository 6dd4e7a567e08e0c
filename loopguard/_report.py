"""Turning a detected mismatch into the error message, the warning and the log records."""

from __future__ import annotations

import warnings
from typing import Any, Optional

from ._errors import LoopMismatchError, LoopMismatchWarning, docs_link
from ._log import EVENT_LOOP_MISMATCH, app_logger
from ._state import STATE

LG101 = "LG101"
LG104 = "LG104"  # dispose() on a loop other than the pooled connections'
LG106 = "LG106"  # a loop closed while a pool still held its connections
EVENT_FOREIGN_DISPOSE = "loopguard.dispose_on_foreign_loop"
EVENT_LOOP_CLOSED_WITH_CONNECTIONS = "loopguard.loop_closed_with_connections"
# Keys that help build the message and the warning but are not plain log values.
_MESSAGE_ONLY = ("owner_loop", "used_site", "created_in_loop")

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
        f"{used_at}",
        f"  likely cause:  {cause}",
        f"  fix:           {fix}",
        f"  (Background on this error at: {docs_link(record['code'])}, code {record['code']})",
    ]
    return "\n".join(lines)


def log_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record as logged: only plain values, no message-only helpers."""
    return {k: v for k, v in record.items() if k not in _MESSAGE_ONLY}


def emit(record: dict[str, Any], event: str = EVENT_LOOP_MISMATCH) -> None:
    """Send one record to structlog, the JSON-lines file and the plugin's listeners."""
    fields = log_fields(record)
    level = "error" if record["action"] == "raised" else "warning"
    getattr(app_logger(), level)(event, **fields)
    sink = STATE.sink
    if sink is not None:
        sink.emit(level, event, fields)
    for listener in list(STATE.listeners):
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
