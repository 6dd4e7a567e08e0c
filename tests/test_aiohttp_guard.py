"""The aiohttp guard (LG109), driven against a real HTTP/1.1 keep-alive server on 127.0.0.1.

Real ``aiohttp.ClientSession`` objects and real loops (``asyncio.run()``,
``new_event_loop()``, a loop in a thread) against the ``http_url`` server
(tools/httpserver.py); nothing mocks aiohttp or the loop.  A session belongs to the loop it
was created on, so each session is created inside a coroutine, as aiohttp requires.  Every
session goes into the ``sessions`` list, whose teardown closes it without leaking a socket.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import aiohttp
import pytest
import structlog
from client_helpers import (
    forget_modules,
    hits,
    new_key,
    run_script,
    running_loop_thread,
    sdk_package,
    stop_loop_thread,
)
from guard_helpers import (
    current_test_id,
    display_path,
    install_round_trip,
    marker_line,
    on_new_loop,
    silence_checked,
    written,
)

import loopguard
from loopguard.integrations import _aiohttp, _httpx_pool

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``

__all__ = ["forget_modules"]  # a fixture
THIS_FILE = display_path(__file__)


async def _new_session(base_url: Optional[str] = None) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url)  # session-site


SESSION_LINE = marker_line(__file__, "session-site")


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as response:  # request-site
        return await response.text()


REQUEST_LINE = marker_line(__file__, "request-site")


def _shut_down(session: aiohttp.ClientSession) -> None:
    """Close ``session`` leaving no socket behind, whatever loop it belongs to: its pooled
    connections' sockets are closed directly, then ``close()`` runs on a new loop."""
    if session.closed:
        return
    owner = session._loop
    if not owner.is_closed() and not owner.is_running():
        owner.run_until_complete(session.close())
        return
    connector = session.connector
    assert connector is not None
    for idle in connector._conns.values():
        for protocol, _ in idle:
            _httpx_pool.close_transport(protocol.transport)
    connector._conns.clear()

    async def close() -> None:
        await session.close()

    asyncio.run(close())


@pytest.fixture
def sessions(_guard: None) -> Iterator[list[aiohttp.ClientSession]]:
    made: list[aiohttp.ClientSession] = []
    yield made
    for session in made:
        _shut_down(session)


def _cached_session(
    sessions: list[aiohttp.ClientSession], base_url: Optional[str] = None
) -> tuple[aiohttp.ClientSession, Any]:
    """A session created (on a new loop, then closed) the way a cache would keep it."""
    session, loop = on_new_loop(lambda: _new_session(base_url))
    sessions.append(session)
    return session, loop


# -- the bug, without loopguard ---------------------------------------------------------------

JOBS_SCRIPT = """\
import asyncio, os, aiohttp

session = None

async def job(number):
    global session
    if session is None:  # created on the first job's loop, kept for the next jobs
        session = aiohttp.ClientSession()
    async with session.get(os.environ["HTTP_URL"] + "/") as response:
        print(f"job {number}: {response.status}", flush=True)

for number in (1, 2):
    asyncio.run(job(number))
"""

IDLE_LOOP_SCRIPT = """\
import asyncio, os, aiohttp

async def get(session):
    async with session.get(os.environ["HTTP_URL"] + "/") as response:
        return response.status

async def new_session():
    return aiohttp.ClientSession()

loop = asyncio.new_event_loop()  # a wider-scoped fixture's loop, say
session = loop.run_until_complete(new_session())
print("owner loop:", loop.run_until_complete(get(session)), flush=True)
try:
    asyncio.run(get(session))
finally:
    loop.run_until_complete(session.close())
    loop.close()
"""


def test_without_loopguard_the_second_job_fails_with_event_loop_is_closed(
    http_url: str, tmp_path: Path
) -> None:
    done = run_script(JOBS_SCRIPT, tmp_path, http_url)
    assert done.stdout == "job 1: 200\n"
    assert "\nRuntimeError: Event loop is closed\n" in done.stderr
    assert "LoopMismatch" not in done.stderr


def test_without_loopguard_an_idle_owner_loop_gives_the_misleading_timeout_error(
    http_url: str, tmp_path: Path
) -> None:
    """aio-libs/aiohttp#10153: the session's loop is open, so the error is about timeouts."""
    done = run_script(IDLE_LOOP_SCRIPT, tmp_path, http_url)
    assert done.stdout == "owner loop: 200\n"
    assert done.stderr.rstrip().endswith(
        "RuntimeError: Timeout context manager should be used inside a task"
    )


def test_under_loopguard_both_scripts_stop_with_the_facts(http_url: str, tmp_path: Path) -> None:
    done = run_script(JOBS_SCRIPT, tmp_path, http_url, LOOPGUARD="1")
    assert done.stdout == "job 1: 200\n"
    assert "\nloopguard.LoopMismatchError: aiohttp ClientSession used on event loop #2" in (
        done.stderr
    )
    assert "Event loop is closed" not in done.stderr
    done = run_script(IDLE_LOOP_SCRIPT, tmp_path, http_url, LOOPGUARD="1")
    assert "which is still open but not running" in done.stderr
    assert "Timeout context manager" not in done.stderr


# -- raise mode -------------------------------------------------------------------------------


def test_second_asyncio_run_raises_before_any_io_with_the_facts(
    http_url: str, sessions: list[aiohttp.ClientSession], request: pytest.FixtureRequest
) -> None:
    key = new_key("aiohttp")
    session, _ = _cached_session(sessions, http_url)
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(loopguard.LoopMismatchError) as excinfo,
    ):
        on_new_loop(lambda: _get(session, f"/hit/{key}"))
    assert hits(http_url, key) == 0  # never reached the server
    error = excinfo.value
    test = current_test_id(request)
    assert error.code == "LG109"
    assert error.resource == "aiohttp ClientSession"
    assert error.created_at == f"{THIS_FILE}:{SESSION_LINE}"
    assert error.created_in == "_new_session"
    assert error.created_during == error.bound_during == error.used_during == test
    assert error.owner_loop_closed is True
    record = error.record
    assert record["url"] == http_url
    assert record["operation"] == f"GET {http_url}"
    assert record["bound_at"] == f"{THIS_FILE}:{SESSION_LINE} in _new_session"
    assert record["used_at"] == f"{THIS_FILE}:{REQUEST_LINE} in _get"
    assert record["cause"] == "closed-loop-test"
    assert [entry["code"] for entry in logs] == ["LG109"]


def test_the_message_is_exact(
    http_url: str, sessions: list[aiohttp.ClientSession], request: pytest.FixtureRequest
) -> None:
    session, _ = _cached_session(sessions)
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _get(session, f"{http_url}/"))
    error = excinfo.value
    owner, current = error.owner_loop_id, error.current_loop_id
    test = current_test_id(request)
    assert str(error) == "\n".join(
        [
            f"aiohttp ClientSession used on event loop #{current}, but it belongs to loop "
            f"#{owner}, the loop it was created on; stopped before any I/O.",
            "  session:       aiohttp.ClientSession",
            f"  created at:    {THIS_FILE}:{SESSION_LINE} in _new_session (during {test})",
            f"  bound:         when it was created, to loop #{owner}, which is now closed",
            f"  used now:      during {test} on loop #{current}, at {THIS_FILE}:{REQUEST_LINE} "
            f"in _get (GET {http_url})",
            "  likely cause:  the session outlived the event loop it was created on: it is "
            "cached (a module-level session, an @lru_cache factory, or an SDK client built on "
            "it) while pytest-asyncio gives each test a new loop; a ClientSession, its "
            "connector and its timers belong to the loop it was created on.",
            "  fix:           create the session inside the test's loop and close it with "
            "`async with aiohttp.ClientSession() as session:` (or in an async fixture that "
            "ends with `await session.close()`), or run every test that uses it on one loop "
            "(loop_scope=).",
            "  (Background on this error: `loopguard explain LG109`, "
            "or LG109 on the Error codes page of the docs)",
        ]
    )


SDK = """
    import aiohttp


    class AsyncSDK:
        def __init__(self, base_url):
            self._session = aiohttp.ClientSession(base_url)

        async def ping(self, key):
            async with self._session.get(f"/hit/{key}") as response:
                return await response.text()
"""


async def _new_sdk(module: Any, base_url: str) -> Any:
    return module.AsyncSDK(base_url)  # the SDK client


async def _ping(sdk: Any, key: str) -> str:
    return str(await sdk.ping(key))  # ping-site


def test_a_session_built_by_another_library_names_the_users_line_and_the_library(
    http_url: str,
    sessions: list[aiohttp.ClientSession],
    tmp_path: Path,
    forget_modules: list[str],
) -> None:
    forget_modules.append("fakesdk_aiohttp")
    fakesdk = sdk_package(tmp_path, "fakesdk_aiohttp", SDK)
    sdk, _ = on_new_loop(lambda: _new_sdk(fakesdk, http_url))
    sessions.append(sdk._session)
    key = new_key("sdk")
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _ping(sdk, key))
    error = excinfo.value
    assert error.created_at == f"{THIS_FILE}:{marker_line(__file__, 'the SDK client')}"
    assert error.created_in == "_new_sdk"
    assert error.record["name"] == "fakesdk_aiohttp.AsyncSDK"
    assert error.record["used_at"] == f"{THIS_FILE}:{marker_line(__file__, 'ping-site')} in _ping"
    assert (
        f"  session:       aiohttp.ClientSession built by fakesdk_aiohttp.AsyncSDK for {http_url}"
    ) in str(error)
    assert hits(http_url, key) == 0


def test_an_idle_owner_loop_keeps_its_session_usable(
    http_url: str, sessions: list[aiohttp.ClientSession]
) -> None:
    key = new_key("idle")
    loop = asyncio.new_event_loop()
    try:
        session = loop.run_until_complete(_new_session(http_url))
        first_port = loop.run_until_complete(_get(session, f"/hit/{key}"))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            on_new_loop(lambda: _get(session, f"/hit/{key}"))
        assert excinfo.value.record["cause"] == "idle-loop-test"
        assert loop.run_until_complete(_get(session, f"/hit/{key}")) == first_port
        assert hits(http_url, key) == 2
        loop.run_until_complete(session.close())
    finally:
        loop.close()


def test_an_owner_loop_running_in_another_thread(
    http_url: str, sessions: list[aiohttp.ClientSession]
) -> None:
    loop, thread = running_loop_thread()
    try:
        session = asyncio.run_coroutine_threadsafe(_new_session(http_url), loop).result(10)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            on_new_loop(lambda: _get(session, "/"))
        assert excinfo.value.record["cause"] == "running-loop"
        asyncio.run_coroutine_threadsafe(session.close(), loop).result(10)
    finally:
        stop_loop_thread(loop, thread)


def test_a_closed_session_gets_aiohttps_own_error(
    http_url: str, sessions: list[aiohttp.ClientSession]
) -> None:
    async def make_and_close() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession()
        await session.close()
        return session

    session = asyncio.run(make_and_close())
    with pytest.raises(RuntimeError, match="^Session is closed$"):
        asyncio.run(_get(session, f"{http_url}/"))


# -- warn mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_warns_once_per_loop_then_aiohttp_fails_as_it_would(
    http_url: str, sessions: list[aiohttp.ClientSession], log_file: Path, mode: str
) -> None:
    loop = asyncio.new_event_loop()
    try:
        session = loop.run_until_complete(_new_session(http_url))
        sessions.append(session)
        with written(log_file) as out:

            async def twice() -> list[str]:
                errors = []
                for _ in range(2):
                    try:
                        await _get(session, "/")
                    except RuntimeError as exc:
                        errors.append(str(exc))
                return errors

            errors = on_new_loop(twice)[0]
        assert errors == ["Timeout context manager should be used inside a task"] * 2
        assert out.codes() == ["LG109"] and out.events[0]["action"] == "warned"
        [warning] = out.warnings
        assert warning.filename == __file__ and warning.lineno == REQUEST_LINE
        assert "loopguard cannot move a session to another loop, so the request goes ahead" in (
            str(warning.message)
        )
        loop.run_until_complete(session.close())
    finally:
        loop.close()


# -- silence on correct code ------------------------------------------------------------------


def test_a_session_per_job_closed_on_its_loop_is_silent(
    http_url: str, mode: str, log_file: Path
) -> None:
    async def job() -> str:
        async with aiohttp.ClientSession(http_url) as session:
            return await _get(session, "/")

    with silence_checked(log_file):
        for _ in range(3):
            assert asyncio.run(job()) == "ok"


def test_one_session_on_one_loop_for_the_whole_run_is_silent(
    http_url: str, mode: str, log_file: Path
) -> None:
    async def main() -> list[str]:
        async with aiohttp.ClientSession(http_url) as session:
            results = [await _get(session, "/") for _ in range(3)]
            results += await asyncio.gather(*(_get(session, "/") for _ in range(5)))
            return results

    with silence_checked(log_file):
        assert asyncio.run(main()) == ["ok"] * 8


def test_a_session_created_before_its_loop_runs_and_used_on_that_loop_is_silent(
    http_url: str, mode: str, log_file: Path
) -> None:
    """A program that runs its loop itself: the session takes that loop and stays on it."""
    loop = asyncio.new_event_loop()
    try:
        with silence_checked(log_file):
            session = loop.run_until_complete(_new_session(http_url))
            assert loop.run_until_complete(_get(session, "/")) == "ok"
            loop.run_until_complete(session.close())
    finally:
        loop.close()


# -- what loopguard changes, and what it keeps --------------------------------------------------


def test_uninstall_restores_every_aiohttp_attribute_exactly() -> None:
    def request_stays_a_coroutine_function() -> None:
        assert asyncio.iscoroutinefunction(aiohttp.ClientSession._request)

    changed = install_round_trip((aiohttp.ClientSession,), request_stays_a_coroutine_function)
    assert changed == ["ClientSession.__init__", "ClientSession._request"]


def test_sessions_are_held_weakly(http_url: str) -> None:
    before = len(_aiohttp.SESSIONS)

    async def use_and_close() -> None:
        async with aiohttp.ClientSession(http_url) as session:
            await _get(session, "/")

    for _ in range(20):
        asyncio.run(use_and_close())
    gc.collect()
    assert len(_aiohttp.SESSIONS) == before


def test_a_session_created_before_install_is_guarded_with_its_site_unknown(
    http_url: str, sessions: list[aiohttp.ClientSession]
) -> None:
    loopguard.uninstall()
    session, _ = _cached_session(sessions, http_url)
    loopguard.install("raise")
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _get(session, "/"))
    assert excinfo.value.created_at is None
    assert "created at:    unknown: it was created before loopguard was installed" in str(
        excinfo.value
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.collect()


OLD_AIOHTTP = tuple(int(part) for part in aiohttp.__version__.split(".")[:2]) < (3, 10)


@pytest.mark.skipif(
    not OLD_AIOHTTP, reason="aiohttp 3.10+ refuses to create a session with no loop running"
)
def test_a_session_created_with_no_loop_running_names_the_loop_it_took(
    http_url: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """aiohttp before 3.10 takes asyncio.get_event_loop()'s loop when no loop runs."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            session = aiohttp.ClientSession(http_url)  # outside any loop
        sessions.append(session)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            on_new_loop(lambda: _get(session, "/"))
        error = excinfo.value
        assert error.record["cause"] == "outside-loop"
        assert error.created_at == f"{THIS_FILE}:{marker_line(__file__, 'outside any loop')}"
        assert (
            "  bound:         when it was created with no loop running, to "
            f"asyncio.get_event_loop()'s loop #{error.owner_loop_id}"
        ) in str(error)
        assert "asyncio.get_event_loop() returned, not the loop that uses it" in str(error)
    finally:
        asyncio.set_event_loop(None)
        _shut_down(session)
        loop.close()
