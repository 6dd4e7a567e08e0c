"""The raw asyncpg guard, driven directly against a real PostgreSQL.

Like ``test_sqlalchemy_guard.py``: plain (sync) tests that make and close their own event loops
with ``asyncio.run()`` / ``asyncio.new_event_loop()``; nothing mocks asyncpg or the loop. The
``_guard`` fixture (conftest.py, used by every test here) installs loopguard in the test's
``mode`` (``raise`` unless the test parametrizes ``mode``). Pools and connections that outlive
their loop go into the ``leftovers`` fixture, whose teardown closes their sockets without
touching a dead loop: the run has ``filterwarnings = error``, so a leaked transport would fail
some later test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import weakref
from collections.abc import Awaitable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import quote

import asyncpg
import pytest
import sqlalchemy.exc
import structlog
from asyncpg import connresource
from asyncpg.cursor import BaseCursor, Cursor, CursorFactory, CursorIterator
from asyncpg.pool import Pool, PoolConnectionProxy
from asyncpg.prepared_stmt import PreparedStatement
from asyncpg.transaction import Transaction
from guard_helpers import (
    SECRET,
    XDIST_FIELDS,
    XDIST_RECORD,
    assert_no_secret,
    backend,
    current_test_id,
    display_path,
    error_texts,
    install_round_trip,
    loop_in_thread,
    marker_line,
    on_new_loop,
    silence_checked,
    written,
)
from pgserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from teststack import PYTEST_ASYNCIO, requirements_closure

import loopguard
from loopguard import PoolCreatedOutsideLoopWarning, _release
from loopguard._loops import loop_id
from loopguard.integrations import _asyncpg_facts

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``

MODES = ["raise", "warn"]
EVENT = "loopguard.loop_mismatch"
EVENT_OUTSIDE = "loopguard.pool_created_outside_loop"
REPO = Path(__file__).resolve().parent.parent
# The documented fields of an LG103 record (LG101's plus the asyncpg operation).
LOG_KEYS = frozenset(
    {
        "code",
        "action",
        "resource",
        "operation",
        "url",
        "pool_class",
        "created_at",
        "created_in",
        "created_during",
        "bound_during",
        "bound_at",
        "used_at",
        "used_during",
        "owner_loop_id",
        "owner_loop_closed",
        "current_loop_id",
        "cause",
    }
)
LOG_KEYS |= XDIST_FIELDS  # under pytest-xdist, the worker's id too


THIS_FILE = display_path(__file__)


# -- jobs ---------------------------------------------------------------------------------

# A module-global pool, as in scenario 4 (the ``_global_pool`` fixture empties it).
GLOBAL: dict[str, Any] = {}


async def _global_pool_job(dsn: str, loops: Optional[list[Any]] = None) -> int:
    """Scenario 4: create the module-global pool on first use, then use it."""
    if loops is not None:
        loops.append(asyncio.get_running_loop())
    if "pool" not in GLOBAL:
        GLOBAL["pool"] = await asyncpg.create_pool(dsn, min_size=1, max_size=2)  # pool-site
    return await _pool_pid(GLOBAL["pool"])


async def _pool_pid(pool: Any) -> int:
    async with pool.acquire() as conn:  # acquire-site
        return int(await conn.fetchval("select pg_backend_pid()"))


async def _connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn)  # connect-site


async def _conn_pid(conn: Any) -> int:
    return int(await conn.fetchval("select pg_backend_pid()"))  # use-site


POOL_LINE = marker_line(__file__, "pool-site")
ACQUIRE_LINE = marker_line(__file__, "acquire-site")
CONNECT_LINE = marker_line(__file__, "connect-site")
USE_LINE = marker_line(__file__, "use-site")


def _mismatches(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry.get("event") == EVENT]


@contextlib.contextmanager
def _asyncpg_fallout() -> Iterator[None]:
    """Around a call that loopguard lets through to fail in asyncpg (warn mode, unguarded):
    asyncpg's failure on a foreign loop drops a coroutine unawaited and may leave a transport
    for the collector; neither may turn into an error in some later test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        yield
        gc.collect()


def _discard_pool(pool: Any) -> None:
    """Leave nothing behind: close on its own loop if it can still run, else close the
    sockets directly (its loop is closed or busy elsewhere)."""
    if pool._closed or not pool._initialized:  # nothing was ever connected
        return
    loop = pool._loop
    if not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(pool.close())
        return
    pool._closed = True
    for holder in pool._holders:
        if holder._con is not None and not holder._con.is_closed():
            _release.close_without_loop(holder._con)


def _discard_connection(conn: Any) -> None:
    if conn.is_closed():
        return
    loop = conn._loop
    if not loop.is_closed() and not loop.is_running():
        loop.run_until_complete(conn.close())
    else:
        _release.close_without_loop(conn)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def leftovers(_guard: None) -> Iterator[list[Any]]:
    """Append pools and connections here: teardown releases each without leaking a socket."""
    made: list[Any] = []
    yield made
    for obj in made:
        if isinstance(obj, Pool):
            _discard_pool(obj)
        else:
            _discard_connection(obj)


@pytest.fixture
def global_pool(leftovers: list[Any]) -> Iterator[dict[str, Any]]:
    """The module-global pool of scenario 4, emptied (and its pool discarded) afterwards."""
    GLOBAL.clear()
    yield GLOBAL
    if "pool" in GLOBAL:
        leftovers.append(GLOBAL.pop("pool"))


@pytest.fixture
def import_time_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The state of a fresh process at import time: a current event loop that is not running
    (what asyncio.get_event_loop() returns there); run once, then closed afterwards."""
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        if not loop.is_closed():
            # Callbacks a failed cross-loop connect left on it close their sockets.
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
        asyncio.set_event_loop_policy(old)


# -- scenario 4: a module-global pool created on the first loop -------------------------------


def test_module_global_pool_on_a_second_asyncio_run_raises_before_any_io(
    pg_dsn: str, global_pool: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """raise mode, scenario 4: the second asyncio.run() gets LoopMismatchError at acquire with
    every fact exact, and the pool's connection sees no I/O at all."""
    pid, loop_a = on_new_loop(lambda: _global_pool_job(pg_dsn))
    before = asyncio.run(backend(pg_dsn, pid))
    assert before is not None and before["state"] == "idle"

    loops: list[Any] = []
    raises = pytest.raises(loopguard.LoopMismatchError)
    with structlog.testing.capture_logs() as logs, raises as excinfo:
        asyncio.run(_global_pool_job(pg_dsn, loops))
    err = excinfo.value
    call_id = current_test_id(request)
    assert isinstance(err, RuntimeError)
    assert err.code == "LG103"
    assert err.resource == "asyncpg Pool"
    assert err.url == pg_dsn
    assert err.pool_class == "Pool"
    assert err.created_at == f"{THIS_FILE}:{POOL_LINE}"
    assert err.created_in == "_global_pool_job"
    assert err.created_during == err.bound_during == err.used_during == call_id
    assert err.bound_at == f"{THIS_FILE}:{POOL_LINE} in _global_pool_job"
    assert err.used_at == f"{THIS_FILE}:{ACQUIRE_LINE} in _pool_pid"
    assert err.owner_loop_closed is True
    assert err.owner_loop_id == loop_id(loop_a)
    assert err.current_loop_id == loop_id(loops[0])
    assert err.record["action"] == "raised"
    assert err.record["cause"] == "closed-loop-test"
    assert err.record["operation"] == "Pool.acquire"
    [entry] = _mismatches(logs)
    assert set(entry) == LOG_KEYS | {"event", "log_level"}
    assert entry["log_level"] == "error"
    assert {k: entry[k] for k in LOG_KEYS} == err.record
    # Nothing reached the server, and the pool still holds its one idle connection.
    assert asyncio.run(backend(pg_dsn, pid)) == before
    pool = global_pool["pool"]
    assert (pool.get_size(), pool.get_idle_size()) == (1, 1)
    # Nothing was "fixed" behind the user's back: a third loop is stopped the same way.
    with pytest.raises(loopguard.LoopMismatchError):
        asyncio.run(_global_pool_job(pg_dsn))


def test_module_global_pool_message_is_exact(
    pg_dsn: str, global_pool: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """raise mode: the whole message, line by line, for scenario 4."""
    _, loop_a = on_new_loop(lambda: _global_pool_job(pg_dsn))
    loops: list[Any] = []
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_global_pool_job(pg_dsn, loops))
    owner, current = loop_id(loop_a), loop_id(loops[0])
    call_id = current_test_id(request)
    assert str(excinfo.value).splitlines() == [
        f"asyncpg Pool used on event loop #{current}, but it belongs to loop #{owner}, the loop "
        "it captured at create_pool(); stopped before any I/O.",
        f"  pool:          {pg_dsn} (Pool)",
        f"  created at:    {THIS_FILE}:{POOL_LINE} in _global_pool_job (during {call_id})",
        f"  bound:         captured at create_pool() on loop #{owner}, which is now closed",
        f"  used now:      during {call_id} on loop #{current}, at {THIS_FILE}:{ACQUIRE_LINE} "
        "in _pool_pid (Pool.acquire)",
        "  likely cause:  the pool outlived the event loop it was created on: it is kept in a "
        "module global or a cache (created on the first test's loop) while pytest-asyncio gives "
        "each test a new loop.",
        "  fix:           create the pool in an async fixture on the test's loop and `await "
        "pool.close()` in its teardown, or run every test that uses it on one loop (loop_scope=).",
        "  (Background on this error: `loopguard explain LG103`, "
        "or LG103 on the Error codes page of the docs)",
    ]


def test_pool_query_methods_are_stopped_and_named(pg_dsn: str, global_pool: dict[str, Any]) -> None:
    """Pool.fetchval()/execute() acquire internally: stopped the same way, and the record
    names the method the user called."""
    asyncio.run(_global_pool_job(pg_dsn))
    pool = global_pool["pool"]
    for method, args in (("fetchval", ("select 1",)), ("execute", ("select 1",))):
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(getattr(pool, method)(*args))
        assert excinfo.value.record["operation"] == f"Pool.{method}"


SCENARIO_4_SCRIPT = """
import asyncio, sys
import asyncpg

DSN, MODE = sys.argv[1], sys.argv[2]
if MODE != "off":
    import loopguard
    loopguard.install(MODE)

pool = None


async def job():
    global pool
    if pool is None:
        pool = await asyncpg.create_pool(DSN, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        return await conn.fetchval("select 1")


for number in (1, 2):
    try:
        asyncio.run(job())
        print(f"job {number}: ok")
    except Exception as exc:
        print(f"job {number}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        if exc.__context__ is not None:
            print(f"  context: {type(exc.__context__).__name__}: {exc.__context__}")
"""


def _run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTEST"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.parametrize("script_mode", ["off", "raise"])
def test_scenario_4_script_unguarded_and_guarded(
    pg_dsn: str, tmp_path: Path, script_mode: str
) -> None:
    """A real script with a module-global pool and two asyncio.run() calls.  Unguarded, job 2
    fails inside asyncpg with "another operation is in progress" whose context is the
    different-loop error; guarded, job 2 gets loopguard's LoopMismatchError instead."""
    result = _run_script(tmp_path, SCENARIO_4_SCRIPT, pg_dsn, script_mode)
    assert result.returncode == 0, result.stderr
    jobs = [line for line in result.stdout.splitlines() if line.startswith(("job", "  context"))]
    assert jobs[0] == "job 1: ok"
    if script_mode == "off":
        assert jobs[1] == (
            "job 2: InterfaceError: cannot perform operation: another operation is in progress"
        )
        assert jobs[2].startswith("  context: RuntimeError: Task <Task pending")
        assert jobs[2].endswith("attached to a different loop")
    else:
        assert jobs[1:] == [
            "job 2: LoopMismatchError: asyncpg Pool used on event loop #2, but it belongs to "
            "loop #1, the loop it captured at create_pool(); stopped before any I/O."
        ]


@pytest.mark.parametrize("mode", ["warn"])
def test_module_global_pool_in_warn_mode_warns_once_and_lets_asyncpg_fail(
    pg_dsn: str, global_pool: dict[str, Any], mode: str
) -> None:
    """warn mode, scenario 4: one LoopMismatchWarning at the user's line (acquire, the query
    and the release are one misuse), one warning-level record, then the call goes ahead and
    asyncpg's own error follows unchanged."""
    asyncio.run(_global_pool_job(pg_dsn))
    fails = pytest.raises(Exception)  # noqa: B017 - which error is asyncpg's business
    logged, caught_all = structlog.testing.capture_logs(), warnings.catch_warnings(record=True)
    with logged as logs, _asyncpg_fallout(), caught_all as caught, fails as excinfo:
        warnings.simplefilter("always", loopguard.LoopMismatchWarning)
        asyncio.run(_global_pool_job(pg_dsn))
    assert not isinstance(excinfo.value, loopguard.LoopMismatchError)
    assert isinstance(excinfo.value, (asyncpg.InterfaceError, RuntimeError))
    mismatch_warnings = [w for w in caught if w.category is loopguard.LoopMismatchWarning]
    assert len(mismatch_warnings) == 1
    [warning] = mismatch_warnings
    assert (warning.filename, warning.lineno) == (str(Path(__file__)), ACQUIRE_LINE)
    message = str(warning.message)
    assert message.startswith("asyncpg Pool used on event loop #")
    assert "loopguard cannot move it to another loop, so the call goes ahead" in message
    [entry] = _mismatches(logs)
    assert entry["log_level"] == "warning"
    assert entry["action"] == "warned"
    assert entry["operation"] == "Pool.acquire"


# -- scenario 5: create_pool() outside any running loop ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pool_created_outside_a_loop_warns_with_its_site_then_first_use_raises(
    pg_dsn: str,
    import_time_loop: Any,
    leftovers: list[Any],
    mode: str,
    request: pytest.FixtureRequest,
) -> None:
    """Scenario 5: create_pool() with no loop running says nothing yet (the loop it captured
    may be the one the program runs); its first use, awaiting it inside asyncio.run() (another
    loop), gets an LG102 warning at the create_pool() line and a warning record (both modes),
    then is stopped before any I/O in raise mode, reported in warn mode (asyncpg then fails
    as it would)."""
    with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True) as early:
        warnings.simplefilter("always")
        pool, line = asyncpg.create_pool(pg_dsn), sys._getframe().f_lineno
    leftovers.append(pool)
    assert (logs, early) == ([], [])
    captured = pool._loop
    assert captured is import_time_loop
    loops: list[Any] = []

    async def first_use() -> int:
        loops.append(asyncio.get_running_loop())
        await pool  # first-use-site
        return await _pool_pid(pool)

    first_use_line = marker_line(__file__, "first-use-site")
    call_id = current_test_id(request)
    if mode == "raise":
        raises = pytest.raises(loopguard.LoopMismatchError)
        warns = pytest.warns(PoolCreatedOutsideLoopWarning)
        with structlog.testing.capture_logs() as logs, warns as recorded, raises as excinfo:
            asyncio.run(first_use())
        caught = recorded.list
        err = excinfo.value
        assert err.owner_loop_id == loop_id(captured)
        assert err.owner_loop_closed is False
        assert err.created_at == f"{THIS_FILE}:{line}"
        assert err.record["cause"] == "outside-loop"
        assert err.record["operation"] == "Pool.__await__"
        message = str(err)
        assert "(during " + call_id + ", no event loop running)" in message
        assert (
            "  bound:         captured from asyncio.get_event_loop() at create_pool() (no loop "
            f"was running): loop #{loop_id(captured)}, which is still open but not running"
        ) in message
        assert "asyncpg.create_pool() was called with no event loop running" in message
    else:
        fails = pytest.raises(RuntimeError, match="attached to a different loop")
        logged, recording = structlog.testing.capture_logs(), warnings.catch_warnings(record=True)
        with logged as logs, _asyncpg_fallout(), recording as all_warnings, fails:
            warnings.simplefilter("always")
            asyncio.run(first_use())
        caught = [w for w in all_warnings if issubclass(w.category, loopguard.LoopguardWarning)]
        assert [w.category for w in caught] == [
            PoolCreatedOutsideLoopWarning,
            loopguard.LoopMismatchWarning,
        ]
        assert "asyncpg.create_pool() was called with no event loop running" in str(
            caught[1].message
        )
    [warning] = [w for w in caught if w.category is PoolCreatedOutsideLoopWarning]
    assert (warning.filename, warning.lineno) == (str(Path(__file__)), line)
    assert isinstance(warning.message, loopguard.LoopguardWarning)
    owner, current = loop_id(captured), loop_id(loops[0])
    assert str(warning.message).splitlines() == [
        f"asyncpg Pool created with no event loop running is first used on loop #{current}, "
        f"but it captured loop #{owner} from asyncio.get_event_loop() and works on that loop "
        "only.",
        f"  pool:          {pg_dsn} (Pool)",
        f"  created at:    {THIS_FILE}:{line} in "
        "test_pool_created_outside_a_loop_warns_with_its_site_then_first_use_raises "
        f"(during {call_id})",
        f"  first used:    during {call_id} on loop #{current}, at {THIS_FILE}:{first_use_line} "
        "in first_use",
        "  likely cause:  asyncpg.create_pool() was called outside async code (at import time, "
        "in a sync function or fixture, or before asyncio.run()); asyncio.run() and "
        "pytest-asyncio run your coroutines on a new loop, where this pool cannot work.",
        "  fix:           create the pool inside the loop that uses it (`pool = await "
        "asyncpg.create_pool(...)` in the coroutine or async fixture that needs it); a program "
        "that runs its loop itself makes it the current loop (asyncio.set_event_loop()) or "
        "passes it as `loop=` before create_pool().",
        "  (Background on this warning: `loopguard explain LG102`, "
        "or LG102 on the Error codes page of the docs)",
    ]
    assert logs[0] == {
        "event": EVENT_OUTSIDE,
        "log_level": "warning",
        "code": "LG102",
        "action": "warned",
        "resource": "asyncpg Pool",
        "url": pg_dsn,
        "pool_class": "Pool",
        "created_at": f"{THIS_FILE}:{line}",
        "created_in": request.node.originalname,
        "created_during": call_id,
        "used_at": f"{THIS_FILE}:{first_use_line} in first_use",
        "used_during": call_id,
        "owner_loop_id": owner,
        "current_loop_id": current,
        "cause": "outside-loop",
        **XDIST_RECORD,
    }
    assert [entry["code"] for entry in logs] == ["LG102", "LG103"]
    if mode == "raise":
        # Nothing was started: on the loop it captured, the very same pool works, silently.
        quiet = warnings.catch_warnings(record=True)
        with structlog.testing.capture_logs() as later, quiet as later_warnings:
            warnings.simplefilter("always")
            assert captured.run_until_complete(first_use()) > 0
            captured.run_until_complete(pool.close())
        assert (later, later_warnings) == ([], [])


def test_pool_created_outside_a_loop_with_an_explicit_loop_is_silent(
    pg_dsn: str, log_file: Path
) -> None:
    """create_pool(loop=loop) outside a running loop says which loop it is for: no LG102, and
    used on that loop nothing is reported."""
    loop = asyncio.new_event_loop()
    try:
        with silence_checked(log_file):
            pool = asyncpg.create_pool(pg_dsn, loop=loop, min_size=1, max_size=1)
            loop.run_until_complete(pool)
            assert loop.run_until_complete(_pool_pid(pool)) > 0
            loop.run_until_complete(pool.close())
    finally:
        loop.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_pool_created_for_the_current_loop_by_run_until_complete_is_silent(
    pg_dsn: str, log_file: Path, mode: str, loop_kind: str
) -> None:
    """Programs that run their loop themselves: create_pool() is called before the loop runs
    (no running loop, no loop=), so the pool captures the current loop, which is the loop
    that then runs it and uses it. Correct code: no LG102, nothing reported."""
    if loop_kind == "uvloop":
        new_event_loop = pytest.importorskip("uvloop").new_event_loop
    else:
        new_event_loop = asyncio.new_event_loop
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with silence_checked(log_file):
            pool = loop.run_until_complete(asyncpg.create_pool(pg_dsn, min_size=1, max_size=1))
            assert loop.run_until_complete(_pool_pid(pool)) > 0
            assert loop.run_until_complete(pool.fetchval("select 1")) == 1
            loop.run_until_complete(pool.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_pool_first_used_on_the_loop_it_captured_is_reported_like_any_pool_later(
    pg_dsn: str, import_time_loop: Any, leftovers: list[Any]
) -> None:
    """A pool created with no loop running and first used on the loop it captured was created
    right: used later on another loop, it is LG103 with the cause of its owner loop's state
    (idle here), not LG102 nor the outside-loop cause."""
    pool = asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
    leftovers.append(pool)
    with structlog.testing.capture_logs() as logs:
        import_time_loop.run_until_complete(pool)
    assert logs == []
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(pool.fetchval("select 1"))
    assert excinfo.value.record["cause"] == "idle-loop-test"
    assert "captured at create_pool() on loop #" in str(excinfo.value)
    assert import_time_loop.run_until_complete(pool.fetchval("select 1")) == 1


def test_pool_created_outside_a_loop_record_goes_to_the_log_file(
    pg_dsn: str, import_time_loop: Any, leftovers: list[Any], log_file: Path
) -> None:
    """LG102 also lands in loopguard's JSON-lines file, as a warning-level record."""
    pool = asyncpg.create_pool(pg_dsn)
    leftovers.append(pool)
    assert log_file.read_text() == ""  # decided at the first use
    raises = pytest.raises(loopguard.LoopMismatchError)
    with pytest.warns(PoolCreatedOutsideLoopWarning), raises:
        asyncio.run(_await(pool))
    first, mismatch = (json.loads(line) for line in log_file.read_text().splitlines())
    assert (first["event"], first["level"], first["code"]) == (EVENT_OUTSIDE, "warning", "LG102")
    assert (mismatch["event"], mismatch["code"]) == (EVENT, "LG103")


async def _await(pool: Any) -> None:
    await pool


# -- passwords: never in a message, a warning or a record ------------------------------------

# Where asyncpg takes a password from: the DSN's userinfo, its query (any case, the name
# percent-encoded too), the sslpassword parameter, the password= argument.
CONNECTING_PASSWORDS = ["userinfo", "password", "pass%77ord", "sslpassword", "argument"]


def _with_password(dsn: str, where: str) -> tuple[str, dict[str, Any], str]:
    """(DSN, keyword arguments, the DSN loopguard should show) with SECRET put ``where``."""
    encoded = quote(SECRET, safe="")
    if where == "argument":
        return dsn, {"password": SECRET}, dsn
    if where == "userinfo":
        scheme, _, rest = dsn.partition("://")
        user, at, hosts = rest.rpartition("@")
        assert at and ":" not in user, dsn  # pg_dsn: a user, no password
        shown = f"{scheme}://{user}:***@{hosts}"
        return f"{scheme}://{user}:{encoded}@{hosts}", {}, shown
    if where == "libpq":  # key=value: asyncpg refuses it when it connects, not before
        escaped = SECRET.replace("\\", "\\\\").replace("'", "\\'")
        return (
            f"user=postgres password='{escaped}' dbname=postgres",
            {},
            ("user=postgres password=*** dbname=postgres"),
        )
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}{where}={encoded}", {}, f"{dsn}{separator}{where}=***"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", [*CONNECTING_PASSWORDS, "PASSWORD", "libpq"])
def test_pool_created_outside_a_loop_shows_no_password(
    pg_dsn: str,
    import_time_loop: Any,
    leftovers: list[Any],
    log_file: Path,
    mode: str,
    where: str,
) -> None:
    """create_pool() with no loop running, then awaited on another loop: the LG102 warning,
    the LG103 error (message, repr, record, attributes, pickle) or warning, the structlog
    events and the JSON-lines file show the DSN with ``***`` for the password."""
    dsn, kwargs, shown = _with_password(pg_dsn, where)
    texts: list[str] = []
    with written(log_file, asyncpg_fails=mode == "warn") as out:
        pool = asyncpg.create_pool(dsn, **kwargs)
        leftovers.append(pool)

        async def first_use() -> None:
            await pool

        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(first_use())
            texts += error_texts(excinfo.value)
        else:
            with pytest.raises(Exception):  # noqa: B017 - which error is asyncpg's business
                asyncio.run(first_use())
    assert out.codes() == ["LG102", "LG103"]
    assert [w.category for w in out.warnings][:1] == [PoolCreatedOutsideLoopWarning]
    assert {entry["url"] for entry in out.events} == {shown}
    assert f"  pool:          {shown} (Pool)" in str(out.warnings[0].message)
    assert_no_secret(texts + out.texts())


@pytest.mark.parametrize("where", CONNECTING_PASSWORDS)
def test_connected_pool_and_connection_show_no_password(
    pg_dsn: str, log_file: Path, where: str
) -> None:
    """A pool and a connection that really connected with the password, used on another
    loop: neither LG103 error nor their records show it."""
    dsn, kwargs, shown = _with_password(pg_dsn, where)

    async def connect() -> tuple[Any, Any]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, **kwargs)
        return pool, await asyncpg.connect(dsn, **kwargs)

    loop_a = asyncio.new_event_loop()
    pool, conn = loop_a.run_until_complete(connect())
    texts: list[str] = []
    try:
        with written(log_file) as out:
            for job in (_pool_pid(pool), _conn_pid(conn)):
                with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                    asyncio.run(job)
                texts += error_texts(excinfo.value)
    finally:  # on their own loop, which they still work on
        loop_a.run_until_complete(conn.close())
        loop_a.run_until_complete(pool.close())
        loop_a.close()
    assert [entry["resource"] for entry in out.events] == ["asyncpg Pool", "asyncpg Connection"]
    assert out.events[0]["url"] == shown
    assert_no_secret(texts + out.texts())


SCENARIO_5_SCRIPT = """
import asyncio, sys, warnings
import asyncpg

DSN, MODE = sys.argv[1], sys.argv[2]
if MODE != "off":
    import loopguard
    loopguard.install(MODE)

pool = asyncpg.create_pool(DSN)


async def main():
    await pool
    return await pool.fetchval("select 1")


try:
    asyncio.run(main())
    print("main: ok")
except Exception as exc:
    print(f"main: {type(exc).__name__}: {str(exc).splitlines()[0]}")
"""


@pytest.mark.parametrize("script_mode", ["off", "raise"])
def test_scenario_5_script_unguarded_and_guarded(
    pg_dsn: str, tmp_path: Path, script_mode: str
) -> None:
    """A real script that calls create_pool() at import time: unguarded, asyncpg fails with
    the different-loop error; guarded, the warning names the line and the first use raises
    LoopMismatchError."""
    result = _run_script(tmp_path, SCENARIO_5_SCRIPT, pg_dsn, script_mode)
    assert result.returncode == 0, result.stderr
    [main] = [line for line in result.stdout.splitlines() if line.startswith("main")]
    if script_mode == "off":
        assert main.startswith("main: RuntimeError: Task <Task pending")
        assert main.endswith("attached to a different loop")
    else:
        assert main.startswith("main: LoopMismatchError: asyncpg Pool used on event loop #")
        line = SCENARIO_5_SCRIPT.splitlines().index("pool = asyncpg.create_pool(DSN)") + 1
        assert f"app.py:{line}: PoolCreatedOutsideLoopWarning: asyncpg Pool created" in (
            result.stderr
        )


# -- scenario 6: a connection used after its loop closed ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_connection_used_after_its_loop_closed(
    pg_dsn: str, leftovers: list[Any], mode: str, request: pytest.FixtureRequest
) -> None:
    """Scenario 6: a connection opened in one asyncio.run() and queried in the next is
    stopped at _check_open, before any I/O (raise), or reported once and left to asyncpg
    (warn)."""
    conn, loop_a = on_new_loop(lambda: _connect(pg_dsn))
    leftovers.append(conn)
    pid = conn.get_server_pid()
    before = asyncio.run(backend(pg_dsn, pid))
    call_id = current_test_id(request)
    loops: list[Any] = []

    async def use() -> int:
        loops.append(asyncio.get_running_loop())
        return await _conn_pid(conn)

    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(use())
        err = excinfo.value
        assert err.resource == "asyncpg Connection"
        assert err.url == pg_dsn
        assert err.pool_class is None
        assert err.created_at == f"{THIS_FILE}:{CONNECT_LINE}"
        assert err.created_in == "_connect"
        assert err.used_at == f"{THIS_FILE}:{USE_LINE} in _conn_pid"
        assert err.record["operation"] == "Connection.fetchval"
        assert err.owner_loop_id == loop_id(loop_a)
        assert err.current_loop_id == loop_id(loops[0])
        assert str(err).splitlines() == [
            f"asyncpg Connection used on event loop #{loop_id(loops[0])}, but it belongs to "
            f"loop #{loop_id(loop_a)}, the loop it was opened on; stopped before any I/O.",
            f"  connection:    {pg_dsn}",
            f"  created at:    {THIS_FILE}:{CONNECT_LINE} in _connect (during {call_id})",
            f"  bound:         opened on loop #{loop_id(loop_a)}, which is now closed",
            f"  used now:      during {call_id} on loop #{loop_id(loops[0])}, at "
            f"{THIS_FILE}:{USE_LINE} in _conn_pid (Connection.fetchval)",
            "  likely cause:  the connection outlived the event loop it was opened on: it is "
            "kept in a module global, a cache or a wider-scoped fixture while pytest-asyncio "
            "gives each test a new loop.",
            "  fix:           open (or acquire) it in an async fixture on the test's loop and "
            "close (or release) it in the fixture's teardown.",
            "  (Background on this error: `loopguard explain LG103`, "
            "or LG103 on the Error codes page of the docs)",
        ]
        assert asyncio.run(backend(pg_dsn, pid)) == before
        assert not conn.is_closed()
    else:
        fails = pytest.raises(RuntimeError, match="attached to a different loop")
        with _asyncpg_fallout(), pytest.warns(loopguard.LoopMismatchWarning) as caught, fails:
            asyncio.run(use())
        [warning] = caught.list
        assert (warning.filename, warning.lineno) == (str(Path(__file__)), USE_LINE)


@pytest.mark.parametrize("mode", MODES)
def test_close_on_a_foreign_loop(pg_dsn: str, leftovers: list[Any], mode: str) -> None:
    """close() of a connection whose loop has closed, on a new loop: raise mode stops it
    before any I/O (the connection is left as it was); warn mode reports it and asyncpg
    fails with "Event loop is closed", as it does unguarded."""
    conn, loop_a = on_new_loop(lambda: _connect(pg_dsn))
    leftovers.append(conn)

    async def close() -> None:
        await conn.close()  # close-site

    if mode == "raise":
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(close())
        assert excinfo.value.record["operation"] == "Connection.close"
        assert (
            excinfo.value.used_at == f"{THIS_FILE}:{marker_line(__file__, 'close-site')} in close"
        )
        assert not conn.is_closed()
    else:
        fails = pytest.raises(RuntimeError, match="Event loop is closed")
        with _asyncpg_fallout(), pytest.warns(loopguard.LoopMismatchWarning), fails:
            asyncio.run(close())


def test_connection_of_an_idle_loop_is_left_untouched(pg_dsn: str) -> None:
    """Owner loop still open but not running (a wider-scoped fixture's loop): raise mode says
    so (idle-loop-test), and back on its own loop the connection works as before."""
    loop_a = asyncio.new_event_loop()
    try:
        conn = loop_a.run_until_complete(_connect(pg_dsn))
        pid = loop_a.run_until_complete(_conn_pid(conn))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_conn_pid(conn))
        err = excinfo.value
        assert err.owner_loop_closed is False
        assert err.record["cause"] == "idle-loop-test"
        assert f"loop #{loop_id(loop_a)}, which is still open but not running" in str(err)
        assert "loop_scope=" in str(err)
        assert loop_a.run_until_complete(_conn_pid(conn)) == pid
        loop_a.run_until_complete(conn.close())
    finally:
        loop_a.close()


def test_connection_of_a_loop_running_in_another_thread(pg_dsn: str) -> None:
    """Owner loop running in another thread: cause running-loop, and the owner keeps using it."""
    with loop_in_thread() as loop_a:

        def on_a(coro: Awaitable[T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop_a).result(10)  # type: ignore[arg-type]

        conn = on_a(_connect(pg_dsn))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_conn_pid(conn))
        assert excinfo.value.record["cause"] == "running-loop"
        assert "another thread" in str(excinfo.value)
        assert on_a(_conn_pid(conn)) > 0
        on_a(conn.close())


def test_uvloop_loops_are_checked_the_same(pg_dsn: str) -> None:
    """Under uvloop (scenario 8): a pool and a connection of one uvloop loop used on another
    are stopped before any I/O, and still work on their own loop."""
    uvloop = pytest.importorskip("uvloop")
    loop_a, loop_b = uvloop.new_event_loop(), uvloop.new_event_loop()
    try:

        async def make() -> tuple[Any, Any]:
            pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
            return pool, await asyncpg.connect(pg_dsn)

        pool, conn = loop_a.run_until_complete(make())
        for job, resource in (
            (_pool_pid(pool), "asyncpg Pool"),
            (_conn_pid(conn), "asyncpg Connection"),
        ):
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                loop_b.run_until_complete(job)
            assert excinfo.value.resource == resource
            assert excinfo.value.owner_loop_id == loop_id(loop_a)
            assert excinfo.value.current_loop_id == loop_id(loop_b)
            assert "which is still open but not running" in str(excinfo.value)
        assert loop_a.run_until_complete(_pool_pid(pool)) > 0
        assert loop_a.run_until_complete(_conn_pid(conn)) > 0
        loop_a.run_until_complete(conn.close())
        loop_a.run_until_complete(pool.close())
    finally:
        loop_a.close()
        loop_b.close()


# -- prepared statements, cursors, transactions, copy ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_connection_resources_used_on_a_foreign_loop(
    pg_dsn: str, tmp_path: Path, mode: str
) -> None:
    """A prepared statement, a transaction and a cursor made on loop A, and the connection's
    cursor()/transaction()/copy methods, used on loop B: each is stopped before any I/O and
    named (raise), or reported (warn: once for the connection, before asyncpg's own error);
    reading a statement's query is not I/O and passes.  Raise mode leaves loop A's objects
    fully usable."""
    loop_a = asyncio.new_event_loop()
    try:

        async def prepare() -> tuple[Any, Any, Any, Any]:
            conn = await asyncpg.connect(pg_dsn)
            stmt = await conn.prepare("select generate_series(1, 3)")
            tr = conn.transaction()
            await tr.start()
            cursor = await conn.cursor("select generate_series(1, 10)")
            return conn, stmt, tr, cursor

        conn, stmt, tr, cursor = loop_a.run_until_complete(prepare())
        target = tmp_path / "out.csv"
        uses: list[tuple[str, Callable[[], Any]]] = [
            ("PreparedStatement.fetchval", lambda: stmt.fetchval()),
            ("PreparedStatement.fetch", lambda: stmt.fetch()),
            ("Transaction.commit", lambda: tr.commit()),
            ("Cursor.fetch", lambda: cursor.fetch(1)),
            ("Connection.transaction", lambda: conn.transaction().start()),
            ("Connection.cursor", lambda: conn.cursor("select 1")),
            ("Connection.prepare", lambda: conn.prepare("select 1")),
            ("Connection.execute", lambda: conn.execute("select 1")),
            (
                "Connection.copy_from_query",
                lambda: conn.copy_from_query("select 1", output=str(target)),
            ),
        ]

        async def on_b(make: Callable[[], Any]) -> Any:
            assert stmt.get_query() == "select generate_series(1, 3)"  # no I/O: allowed
            return await make()

        if mode == "raise":
            for operation, make in uses:
                with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                    asyncio.run(on_b(make))
                assert excinfo.value.record["operation"] == operation
                assert excinfo.value.resource == "asyncpg Connection"
            assert not target.exists()

            async def all_still_work() -> list[Any]:
                rows = [await stmt.fetchval(), [tuple(r) for r in await cursor.fetch(2)]]
                await tr.commit()
                return rows

            assert loop_a.run_until_complete(all_still_work()) == [1, [(1,), (2,)]]
            loop_a.run_until_complete(conn.close())
        else:
            with _asyncpg_fallout(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", loopguard.LoopMismatchWarning)
                with pytest.raises(RuntimeError, match="attached to a different loop"):
                    asyncio.run(on_b(uses[0][1]))
            assert [w.category for w in caught] == [loopguard.LoopMismatchWarning]
            assert "(PreparedStatement.fetchval)" in str(caught[0].message)
            # Its operation on loop A is left pending by asyncpg's failure: close the socket.
            _release.close_without_loop(conn)
    finally:
        loop_a.close()


def test_pool_connection_used_released_and_closed_on_a_foreign_loop(pg_dsn: str) -> None:
    """A connection acquired on loop A and used on loop B is reported as an asyncpg Connection
    with the pool's creation site; release() and close() of the pool on loop B are stopped
    too; all of them work on loop A afterwards."""
    loop_a = asyncio.new_event_loop()
    try:

        async def make() -> tuple[Any, Any]:
            pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)  # member-pool
            return pool, await pool.acquire()

        pool, conn = loop_a.run_until_complete(make())
        assert isinstance(conn, PoolConnectionProxy)
        facts = _asyncpg_facts.CONNECTIONS.get(conn._con)
        assert facts is not None and facts.opened_by == _asyncpg_facts.ORIGIN_POOL
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_conn_pid(conn))
        err = excinfo.value
        assert err.resource == "asyncpg Connection"
        assert err.pool_class == "Pool"
        assert err.created_at == f"{THIS_FILE}:{marker_line(__file__, 'member-pool')}"
        assert err.record["operation"] == "Connection.fetchval"
        message = str(err)
        assert f"  connection:    {pg_dsn} (acquired from an asyncpg Pool)" in message
        assert "in make (during " in message and ": the asyncpg Pool it belongs to" in message
        assert "  bound:         opened by its pool on loop #" in message
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(pool.release(conn))
        assert excinfo.value.record["operation"] == "Pool.release"
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(pool.close())
        assert excinfo.value.record["operation"] == "Pool.close"
        assert loop_a.run_until_complete(_conn_pid(conn)) > 0
        loop_a.run_until_complete(pool.release(conn))
        loop_a.run_until_complete(pool.close())
    finally:
        loop_a.close()


# -- legitimate patterns stay silent -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pool_created_and_closed_in_each_asyncio_run_is_silent(
    pg_dsn: str, mode: str, log_file: Path
) -> None:
    """The documented fix for scenario 4: a pool per job, closed before the job returns."""

    async def job() -> int:
        async with asyncpg.create_pool(pg_dsn, min_size=1, max_size=2) as pool:
            return await _pool_pid(pool)

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(job())


@pytest.mark.parametrize("mode", MODES)
def test_one_loop_for_everything_is_silent(pg_dsn: str, mode: str, log_file: Path) -> None:
    """Pool, acquired connections (concurrently, with waits), raw connections, prepared
    statements, transactions, cursors, copy, listeners and close, all on one loop."""

    async def everything() -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
        pids = await asyncio.gather(*(_pool_pid(pool) for _ in range(8)))
        assert 1 <= len(set(pids)) <= 2
        async with pool.acquire() as conn, conn.transaction():
            stmt = await conn.prepare("select generate_series(1, 5)")
            assert await stmt.fetchval() == 1
            assert len([row async for row in stmt.cursor()]) == 5
            cursor = await conn.cursor("select generate_series(1, 5)")
            assert len(await cursor.fetch(3)) == 3
        assert await pool.fetchval("select 2") == 2
        conn = await asyncpg.connect(pg_dsn)
        await conn.add_listener("chan", lambda *args: None)
        await conn.remove_listener("chan", lambda *args: None)
        await conn.copy_from_query("select 1", output=lambda data: asyncio.sleep(0))
        await conn.close()
        await pool.close()

    with silence_checked(log_file):
        asyncio.run(everything())


def _shut_down(engine: Any) -> None:
    """Dispose an engine whose connection belongs to a closed loop, leaking no socket: the
    SQLAlchemy guard's warn mode closes stale sockets without their loop (its own tests'
    teardown does the same)."""
    loopguard.install("warn")

    async def heal_and_dispose() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loopguard.LoopMismatchWarning)
            async with engine.connect():
                pass
        await engine.dispose()

    asyncio.run(heal_and_dispose())


@pytest.mark.parametrize("mode", MODES)
def test_sqlalchemy_engines_are_left_to_the_sqlalchemy_guard(
    pg_dsn: str, mode: str, log_file: Path
) -> None:
    """SQLAlchemy's asyncpg connections are known as SQLAlchemy's; legitimate use (NullPool
    across loops, an engine disposed per loop, its raw driver connection on its own loop) is
    silent."""
    url = sqlalchemy_url(pg_dsn)
    null_engine = create_async_engine(url, poolclass=NullPool)
    engine = create_async_engine(url)
    origins: list[str] = []

    async def job() -> None:
        async with null_engine.connect() as conn:
            await conn.execute(text("select 1"))
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None and await driver.fetchval("select 3") == 3
            facts = _asyncpg_facts.CONNECTIONS.get(driver)
            assert facts is not None
            origins.append(facts.opened_by)
        await engine.dispose()

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(job())
    assert origins == [_asyncpg_facts.ORIGIN_SQLALCHEMY] * 3


@pytest.mark.parametrize("mode", MODES)
def test_sqlalchemy_connection_misused_by_sqlalchemy_is_not_reported_twice(
    pg_dsn: str, mode: str
) -> None:
    """A SQLAlchemy connection checked out on loop A and used on loop B while still checked
    out: raw use of its driver connection is reported (raise mode: stopped, naming where it
    came from), but SQLAlchemy's own calls into asyncpg are reported once, as the SQLAlchemy
    guard's LG101 for a held connection (test_held_connections.py): no LG103 record."""
    engine = create_async_engine(sqlalchemy_url(pg_dsn))

    async def check_out() -> tuple[Any, Any]:
        conn = engine.connect()
        await conn.start()
        raw = await conn.get_raw_connection()
        return conn, raw.driver_connection

    (conn, driver), _ = on_new_loop(check_out)
    try:
        if mode == "raise":
            with pytest.raises(loopguard.LoopMismatchError) as excinfo:
                asyncio.run(driver.fetchval("select 1"))
            assert excinfo.value.created_at is None
            assert "created at:    opened by a SQLAlchemy engine's pool" in str(excinfo.value)

        async def misuse() -> None:
            if mode == "raise":
                with pytest.raises(loopguard.LoopMismatchError) as caught:
                    await conn.execute(text("select 1"))
                assert caught.value.code == "LG101"
                await conn.invalidate()  # its loop is closed: dropped without I/O
                return
            with (
                pytest.warns(loopguard.LoopMismatchWarning),
                pytest.raises(sqlalchemy.exc.InterfaceError, match="connection is closed"),
            ):
                await conn.execute(text("select 1"))
            await conn.close()

        with structlog.testing.capture_logs() as logs, _asyncpg_fallout():
            asyncio.run(misuse())
        assert [e["code"] for e in _mismatches(logs)] == ["LG101"]
    finally:
        with _asyncpg_fallout():
            _shut_down(engine)


# -- install / uninstall --------------------------------------------------------------------------

_GUARDED_CLASSES = (
    Pool,
    asyncpg.Connection,
    connresource.ConnectionResource,
    PoolConnectionProxy,
    PreparedStatement,
    Transaction,
    CursorFactory,
    BaseCursor,
    Cursor,
    CursorIterator,
)


def _patched_statement_methods() -> list[str]:
    """PreparedStatement's methods that reach the server (fetchmany is newer than 0.27)."""
    names = ["cursor", "executemany", "explain", "fetch", "fetchmany", "fetchrow", "fetchval"]
    return [f"PreparedStatement.{name}" for name in names if hasattr(PreparedStatement, name)]


def test_every_io_method_of_a_prepared_statement_is_checked() -> None:
    """Every guarded method of PreparedStatement (asyncpg's wrapper that checks the
    connection first) is either checked by loopguard or one of the reads that do no I/O: a
    method a newer asyncpg adds is caught here, not left unchecked."""
    reads = {"get_name", "get_query", "get_statusmsg", "get_parameters", "get_attributes"}
    guarded_code = connresource.guarded(lambda self: None).__code__
    checked = {
        name
        for name, value in vars(PreparedStatement).items()
        if getattr(value, "__loopguard_wrapped__", False)
    }
    guarded = {
        name
        for name, value in vars(PreparedStatement).items()
        if getattr(value.__wrapped__ if name in checked else value, "__code__", None)
        is guarded_code
    }
    assert reads <= guarded
    assert guarded - reads == checked
    assert sorted(f"PreparedStatement.{name}" for name in checked) == _patched_statement_methods()


def test_uninstall_restores_every_asyncpg_attribute_exactly() -> None:
    """install() changes exactly the documented attributes; uninstall() puts back the very
    objects that were there (proxies and ConnectionResource itself are never touched; the
    subclasses' inherited _check_conn_validity goes back to being inherited)."""

    def wrappers_stay_coroutine_functions() -> None:
        assert asyncio.iscoroutinefunction(asyncpg.Connection.close)
        assert asyncio.iscoroutinefunction(Pool._async__init__)

    changed = install_round_trip(_GUARDED_CLASSES, wrappers_stay_coroutine_functions)
    assert changed == [
        "BaseCursor._check_conn_validity",
        "Connection.__init__",
        "Connection._check_open",
        "Connection._copy_in",
        "Connection._copy_out",
        "Connection.close",
        "CursorFactory._check_conn_validity",
        "Pool.__init__",
        "Pool._async__init__",
        "Pool._check_init",
        "Pool.close",
        "Pool.terminate",
        *_patched_statement_methods(),
        "Transaction._check_conn_validity",
    ]


def test_pool_created_before_install_is_guarded_with_its_site_unknown(
    pg_dsn: str, leftovers: list[Any]
) -> None:
    """A pool created (and used) while loopguard was not installed is still stopped on a
    foreign loop; the message says its creation site is unknown and how to fix that."""
    loopguard.uninstall()
    pool, _ = on_new_loop(lambda: asyncpg.create_pool(pg_dsn, min_size=1, max_size=1))
    leftovers.append(pool)
    loopguard.install("raise")
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_pool_pid(pool))
    assert excinfo.value.created_at is None
    assert (
        "created at:    unknown: the pool was created before loopguard was installed "
        "(install it earlier: LOOPGUARD=1 or the pytest plugin)"
    ) in str(excinfo.value)


def test_without_sqlalchemy_the_asyncpg_guard_installs_and_works(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Code that uses asyncpg alone: in a Python that sees only loopguard, structlog and asyncpg
    (``-S``, ``-W error``), install() enables the asyncpg guard (saying why SQLAlchemy's, httpx's
    and aiohttp's are skipped) and a connection used on a second loop is stopped; uninstall()
    works."""
    visible = tmp_path / "visible"
    visible.mkdir()
    (visible / "loopguard").symlink_to(REPO / "loopguard")
    # With what they require on this Python: before 3.11 structlog needs typing_extensions
    # and asyncpg needs async_timeout.
    for name in requirements_closure(["structlog", "asyncpg"]):
        module = __import__(name)
        origin = Path(module.__file__ or "")
        origin = origin.parent if origin.name == "__init__.py" else origin
        (visible / origin.name).symlink_to(origin)
    code = """
        import asyncio, sys
        import asyncpg, loopguard
        from loopguard import _release
        from loopguard._state import STATE
        try:
            import sqlalchemy
        except ImportError:
            pass
        else:
            raise SystemExit("sqlalchemy should not be importable here")
        loopguard.install()
        print("ENABLED:", STATE.enabled)
        print("SKIPPED:", sorted(STATE.skipped))
        conn = asyncio.run(asyncpg.connect(sys.argv[1]))
        try:
            asyncio.run(conn.fetchval("select 1"))
        except loopguard.LoopMismatchError as exc:
            print("RAISED:", exc.code, exc.resource, exc.record["operation"])
        finally:
            _release.close_without_loop(conn)
        loopguard.uninstall()
        print("INSTALLED:", loopguard.is_installed())
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOOPGUARD"))}
    env["PYTHONPATH"] = str(visible)
    result = subprocess.run(
        [sys.executable, "-S", "-W", "error", "-c", textwrap.dedent(code), pg_dsn],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    prefixes = ("ENABLED:", "SKIPPED:", "RAISED:", "INSTALLED:")
    assert [line for line in result.stdout.splitlines() if line.startswith(prefixes)] == [
        "ENABLED: ['asyncpg', 'asyncio']",
        "SKIPPED: ['aiohttp', 'httpx', 'psycopg_pool', 'redis', 'sqlalchemy']",
        "RAISED: LG103 asyncpg Connection Connection.fetchval",
        "INSTALLED: False",
    ]


# -- no growth ----------------------------------------------------------------------------------


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _loopguard_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated by loopguard's own code."""
    mine = snapshot.filter_traces([tracemalloc.Filter(True, str(REPO / "loopguard" / "*"))])
    return sum(stat.size for stat in mine.statistics("filename"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_side_tables_do_not_grow(pg_dsn: str) -> None:
    """Thousands of pools and hundreds of connections created, used and closed on a series of
    loops (plus pools dropped without close()): loopguard's tables return to their size, no
    finalizer is left registered, no fd is left open and loopguard's own allocations do not
    grow."""

    async def connection() -> None:
        conn = await asyncpg.connect(pg_dsn)
        async with conn.transaction():
            stmt = await conn.prepare("select 1")
            await stmt.fetchval()
        await conn.close()

    async def round_of(pools: int, connections: int) -> None:
        for _ in range(pools):
            pool = await asyncpg.create_pool(pg_dsn, min_size=0, max_size=1)
            await pool.close()
        # Never awaited nor closed, alive together (so at distinct addresses), then dropped.
        dropped = [asyncpg.create_pool(pg_dsn, min_size=0, max_size=1) for _ in range(pools // 4)]
        del dropped
        used = await asyncpg.create_pool(pg_dsn, min_size=0, max_size=4)
        for start in range(0, connections, 20):
            await asyncio.gather(*(connection() for _ in range(min(20, connections - start))))
            await asyncio.gather(*(used.fetchval("select 1") for _ in range(8)))
        await used.close()

    def sizes() -> tuple[int, int, int]:
        gc.collect()
        finalizers = len(weakref.finalize._registry)  # type: ignore[attr-defined]
        return len(_asyncpg_facts.POOLS), len(_asyncpg_facts.CONNECTIONS), finalizers

    # Warm-up at full size: caches, codecs, loop ids, and the tables' hash arrays at their
    # peak size (a dict keeps its array after deletions).  Traced from the start, so an array
    # the warm-up allocated and a later round reallocates counts once, not twice.
    tracemalloc.start()
    try:
        asyncio.run(round_of(500, 60))
        baseline, fds = sizes(), _fd_count()
        before = _loopguard_bytes(tracemalloc.take_snapshot())
        for _ in range(4):
            asyncio.run(round_of(500, 60))
        assert sizes() == baseline
        after = _loopguard_bytes(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert _fd_count() <= fds
    # 2000 pools and 240 connections later: a few loop ids at most (kilobytes, not megabytes).
    assert after - before < 16_384, (before, after)


def test_pool_dropped_without_close_is_forgotten(pg_dsn: str) -> None:
    """Pools cannot be weakly referenced: their entry goes with their holders' list, so a pool
    that is garbage-collected without close() leaves nothing behind (and a new pool at the
    same address gets its own entry)."""

    async def make() -> int:
        pool = await asyncpg.create_pool(pg_dsn, min_size=0, max_size=1)
        key = id(pool)
        assert key in _asyncpg_facts.POOLS.ids()
        return key

    key = asyncio.run(make())
    gc.collect()
    assert key not in _asyncpg_facts.POOLS.ids()


def test_pool_close_and_terminate_forget_the_pool(pg_dsn: str) -> None:
    """A closed or terminated pool that is still referenced has no entry any more."""

    async def close_and_terminate() -> list[Any]:
        closed = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        terminated = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        assert {id(closed), id(terminated)} <= _asyncpg_facts.POOLS.ids()
        await closed.close()
        terminated.terminate()
        return [closed, terminated]

    kept = asyncio.run(close_and_terminate())
    assert not {id(pool) for pool in kept} & _asyncpg_facts.POOLS.ids()


# -- through the pytest plugin ------------------------------------------------------------------

APP_DB = """
import os

import asyncpg

_pool = None


async def get_pool():
    global _pool
    if _pool is None:
        _pool = await asyncpg.create_pool(os.environ["APP_DSN"], min_size=1, max_size=1)
    return _pool
"""

APP_TESTS = """
from app.db import get_pool


async def test_one():
    pool = await get_pool()
    assert await pool.fetchval("select 1") == 1


async def test_two():
    pool = await get_pool()
    assert await pool.fetchval("select 2") == 2
"""


@pytest.mark.parametrize("plugin_mode", ["off", "raise", "warn"])
def test_pytest_suite_with_a_module_global_pool(
    pytester: pytest.Pytester,
    pg_env: str,
    monkeypatch: pytest.MonkeyPatch,
    plugin_mode: str,
) -> None:
    """Scenario 4 as users meet it: a module-global pool and pytest-asyncio's loop per test.
    Unguarded, test_two fails inside asyncpg; --loopguard fails it with LoopMismatchError
    naming app/db.py and test_one, and summarises it; warn mode warns at test_two's line and
    asyncpg's own error follows."""
    monkeypatch.setenv("APP_DSN", pg_env)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    for name in ("LOOPGUARD", "LOOPGUARD_LOG_FILE", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    lines = ["[pytest]", "asyncio_mode = auto", "pythonpath = ."]
    if PYTEST_ASYNCIO >= (0, 24):  # older lines do not know the option (and warn about it)
        lines.append("asyncio_default_fixture_loop_scope = function")
    pytester.makeini("\n".join(lines) + "\n")
    (pytester.path / "app").mkdir()
    (pytester.path / "app" / "__init__.py").write_text("")
    (pytester.path / "app" / "db.py").write_text(APP_DB.lstrip("\n"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_app.py").write_text(APP_TESTS.lstrip("\n"))
    args = [] if plugin_mode == "off" else [f"--loopguard-mode={plugin_mode}"]
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--tb=short", *args, timeout=120
    )
    result.assert_outcomes(passed=1, failed=1)
    db_lines = APP_DB.lstrip("\n").splitlines()
    create = 1 + next(n for n, line in enumerate(db_lines) if "create_pool" in line)
    test_lines = APP_TESTS.lstrip("\n").splitlines()
    use = 1 + next(n for n, line in enumerate(test_lines) if "select 2" in line)
    text = result.stdout.str()
    if plugin_mode == "off":
        assert "LoopMismatch" not in text
        assert "attached to a different loop" in text or "another operation" in text
    elif plugin_mode == "raise":
        result.stdout.fnmatch_lines(
            [
                "*test_two*",
                "E   loopguard.LoopMismatchError: asyncpg Pool used on event loop #*, but it "
                "belongs to loop #*, the loop it captured at create_pool(); stopped before any "
                "I/O.",
                f"E     created at:    app/db.py:{create} in get_pool "
                "(during tests/test_app.py::test_one (call))",
                "E     used now:      during tests/test_app.py::test_two (call) on loop #*, "
                f"at tests/test_app.py:{use} in test_two (Pool.fetchval)",
                "*= loopguard =*",
                f"  LG103 app/db.py:{create} in get_pool  *",
            ]
        )
        assert "another operation is in progress" not in text
    else:
        result.stdout.fnmatch_lines(
            [
                "*warnings summary*",
                f"*tests/test_app.py:{use}: LoopMismatchWarning: asyncpg Pool used on event "
                "loop #*",
            ]
        )
        assert "another operation is in progress" in text  # asyncpg's own error follows


ASYNCPG_OWN_ERRORS = """
import asyncio
import os

import asyncpg


async def closed_connection():
    conn = await asyncpg.connect(os.environ["APP_DSN"])
    await conn.close()
    return conn


def test_connection_closed():
    async def main():
        conn = await closed_connection()
        await conn.execute("select 1")

    asyncio.run(main())


def test_statement_of_a_closed_connection():
    async def main():
        conn = await asyncpg.connect(os.environ["APP_DSN"])
        stmt = await conn.prepare("select 1")
        await conn.close()
        await stmt.fetch()

    asyncio.run(main())


def test_transaction_of_a_closed_connection():
    async def main():
        conn = await asyncpg.connect(os.environ["APP_DSN"])
        transaction = conn.transaction()
        await conn.close()
        await transaction.start()

    asyncio.run(main())
"""


def test_asyncpg_own_errors_show_no_loopguard_frame(
    pytester: pytest.Pytester, pg_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg's own errors raised through the per-statement checks (a closed connection's
    execute, statement and transaction) fail the tests as they would unguarded: pytest's
    traceback hides loopguard's wrappers (``__tracebackhide__``)."""
    monkeypatch.setenv("APP_DSN", pg_env)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    for name in ("LOOPGUARD", "LOOPGUARD_LOG_FILE", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_errors=ASYNCPG_OWN_ERRORS)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--tb=long", "--loopguard-mode=raise", timeout=120
    )
    result.assert_outcomes(failed=3)
    text = result.stdout.str()
    # The traceback's "E" lines, not the short summary (whose lines the terminal's width cuts).
    raised = [line for line in text.splitlines() if line.startswith("E ")]
    assert [line.split(":")[0].split()[-1] for line in raised] == [
        "asyncpg.exceptions._base.InterfaceError"
    ] * 3
    assert "LoopMismatch" not in text
    package = os.path.dirname(loopguard.__file__)
    assert [line for line in text.splitlines() if package in line] == []
