"""The httpx guard (LG108), driven against a real HTTP/1.1 keep-alive server on 127.0.0.1.

Every test creates and closes its own event loops (``asyncio.run()``, ``new_event_loop()``,
a loop in a thread) around real ``httpx.AsyncClient`` objects talking to the ``http_url``
server (tools/httpserver.py); nothing mocks httpx, httpcore or the loop: a pool only belongs
to a loop once it holds a real socket.  Every client goes into the ``clients`` list, whose
teardown closes it without leaking a socket (the run has ``filterwarnings = error``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
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
from loopguard.integrations import _httpx

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``

__all__ = ["forget_modules"]  # a fixture
THIS_FILE = display_path(__file__)


async def _get(client: httpx.AsyncClient, url: str) -> str:
    response = await client.get(url)  # request-site
    return response.text


REQUEST_LINE = marker_line(__file__, "request-site")


def _shut_down(client: httpx.AsyncClient) -> None:
    """Close ``client`` leaving no socket behind, whatever loop its connections are on: warn
    mode drops the ones of other loops without I/O, then ``aclose()`` closes the rest."""
    if client.is_closed:
        return
    loopguard.install("warn")

    async def heal_and_close() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loopguard.LoopMismatchWarning)
            for pool in _pools(client):
                _httpx._on_other_loop(
                    pool,
                    _httpx._lookup(id(pool)) or _httpx._adopt(pool),
                    asyncio.get_running_loop(),
                    None,
                )
        await client.aclose()

    asyncio.run(heal_and_close())


def _pools(client: httpx.AsyncClient) -> list[Any]:
    return [t._pool for t in _httpx._transports(client) if hasattr(t, "_pool")]


@pytest.fixture
def clients(_guard: None) -> Iterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for client in made:
        _shut_down(client)


# -- the bug, without loopguard ---------------------------------------------------------------

JOBS_SCRIPT = """\
import asyncio, os, httpx

client = httpx.AsyncClient()

async def job(number):
    response = await client.get(os.environ["HTTP_URL"] + "/")
    print(f"job {number}: {response.status_code}", flush=True)

for number in (1, 2, 3):
    asyncio.run(job(number))
"""


def test_without_loopguard_the_second_job_fails_with_event_loop_is_closed(
    http_url: str, tmp_path: Path
) -> None:
    done = run_script(JOBS_SCRIPT, tmp_path, http_url)
    assert done.stdout.startswith("job 1: 200\n")
    assert done.stderr.rstrip().endswith("RuntimeError: Event loop is closed")
    assert "LoopMismatch" not in done.stderr


def test_under_loopguard_the_script_stops_at_the_second_job(http_url: str, tmp_path: Path) -> None:
    """LOOPGUARD=1: the start-up hook installs loopguard when httpx is imported."""
    done = run_script(JOBS_SCRIPT, tmp_path, http_url, LOOPGUARD="1")
    assert done.stdout == "job 1: 200\n"
    assert "\nloopguard.LoopMismatchError: httpx AsyncClient used on event loop #2" in done.stderr
    assert "Event loop is closed" not in done.stderr


# -- raise mode -------------------------------------------------------------------------------


def test_second_asyncio_run_raises_before_any_io_with_the_facts(
    http_url: str, clients: list[httpx.AsyncClient], request: pytest.FixtureRequest
) -> None:
    key = new_key("raise")
    client = httpx.AsyncClient(base_url=http_url)  # created here
    clients.append(client)
    on_new_loop(lambda: _get(client, f"/hit/{key}"))
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(loopguard.LoopMismatchError) as excinfo,
    ):
        on_new_loop(lambda: _get(client, f"/hit/{key}"))
    assert hits(http_url, key) == 1  # the second request never reached the server
    error = excinfo.value
    test = current_test_id(request)
    port = http_url.rsplit(":", 1)[1]
    assert error.code == "LG108"
    assert error.resource == "httpx AsyncClient"
    assert error.created_at == f"{THIS_FILE}:{marker_line(__file__, 'created here')}"
    assert error.created_in == request.node.name
    assert error.created_during == test
    assert error.bound_during == test and error.used_during == test
    assert error.owner_loop_closed is True
    record = error.record
    assert record["url"] == f"http://127.0.0.1:{port}"
    assert record["operation"] == f"GET http://127.0.0.1:{port}"
    assert record["bound_at"] == record["used_at"] == f"{THIS_FILE}:{REQUEST_LINE} in _get"
    assert record["cause"] == "closed-loop-test"
    assert "name" not in record  # no other library built it
    assert [entry["code"] for entry in logs] == ["LG108"]
    assert logs[0]["event"] == "loopguard.loop_mismatch" and logs[0]["log_level"] == "error"


def test_the_message_is_exact(
    http_url: str, clients: list[httpx.AsyncClient], request: pytest.FixtureRequest
) -> None:
    client = httpx.AsyncClient()  # the client
    clients.append(client)
    on_new_loop(lambda: _get(client, f"{http_url}/"))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _get(client, f"{http_url}/"))
    error = excinfo.value
    owner, current = error.owner_loop_id, error.current_loop_id
    test = current_test_id(request)
    created = marker_line(__file__, "the client")
    used = f"{THIS_FILE}:{REQUEST_LINE} in _get"
    assert str(error) == "\n".join(
        [
            f"httpx AsyncClient used on event loop #{current}, but its pooled connections "
            f"belong to loop #{owner}; stopped before any I/O.",
            "  client:        httpx.AsyncClient",
            f"  created at:    {THIS_FILE}:{created} in {request.node.name} (during {test}, "
            "no event loop running)",
            f"  bound:         first request sent during {test}, at {used}, on loop #{owner}, "
            "which is now closed",
            f"  used now:      during {test} on loop #{current}, at {used} (GET {http_url})",
            "  likely cause:  the client outlived the event loop it first sent a request on: "
            "it is cached (a module-level client, an @lru_cache factory, or an SDK client built "
            "on it, such as openai.AsyncOpenAI) while pytest-asyncio gives each test a new "
            "loop; its pooled keep-alive connections belong to the first loop.",
            "  fix:           create the client inside the test's loop and close it with "
            "`async with httpx.AsyncClient() as client:` (or in an async fixture that ends "
            "with `await client.aclose()`), or run every test that uses it on one loop "
            "(loop_scope=).",
            "  (Background on this error: `loopguard explain LG108`, "
            "or LG108 on the Error codes page of the docs)",
        ]
    )


SDK = """
    import httpx


    def _make_http_client(base_url):
        return httpx.AsyncClient(base_url=base_url)


    class AsyncSDK:
        def __init__(self, base_url):
            self._client = _make_http_client(base_url)

        async def ping(self, key):
            response = await self._client.get(f"/hit/{key}")
            return response.text
"""


async def _ping(sdk: Any, key: str) -> str:
    return str(await sdk.ping(key))  # ping-site


def test_a_client_built_by_another_library_names_the_users_line_and_the_library(
    http_url: str,
    clients: list[httpx.AsyncClient],
    tmp_path: Path,
    forget_modules: list[str],
    request: pytest.FixtureRequest,
) -> None:
    """``openai.AsyncOpenAI(...)`` builds its httpx.AsyncClient in its own __init__: the
    creation site is the user's line that built the SDK client, and the SDK's class is named;
    the line using it now is the user's too, not the SDK's."""
    forget_modules.append("fakesdk")
    fakesdk = sdk_package(tmp_path, "fakesdk", SDK)
    sdk = fakesdk.AsyncSDK(http_url)  # the SDK client
    clients.append(sdk._client)
    key = new_key("sdk")
    on_new_loop(lambda: _ping(sdk, key))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _ping(sdk, key))
    error = excinfo.value
    assert error.created_at == f"{THIS_FILE}:{marker_line(__file__, 'the SDK client')}"
    assert error.created_in == request.node.name
    assert error.record["name"] == "fakesdk.AsyncSDK"
    used = f"{THIS_FILE}:{marker_line(__file__, 'ping-site')} in _ping"
    assert error.record["used_at"] == error.record["bound_at"] == used
    assert f"  client:        httpx.AsyncClient built by fakesdk.AsyncSDK for {http_url}" in str(
        error
    )
    assert hits(http_url, key) == 1


def test_an_idle_owner_loop_keeps_its_connection_untouched(
    http_url: str, clients: list[httpx.AsyncClient]
) -> None:
    """raise mode leaves the pool as it was: the loop that owns it (a wider-scoped fixture's,
    say) goes on using the same keep-alive connection."""
    client = httpx.AsyncClient(base_url=http_url)
    key = new_key("idle")
    loop = asyncio.new_event_loop()
    try:
        first_port = loop.run_until_complete(_get(client, f"/hit/{key}"))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            on_new_loop(lambda: _get(client, f"/hit/{key}"))
        assert excinfo.value.record["cause"] == "idle-loop-test"
        assert excinfo.value.owner_loop_closed is False
        assert "which is still open but not running" in str(excinfo.value)
        assert loop.run_until_complete(_get(client, f"/hit/{key}")) == first_port
        assert hits(http_url, key) == 2
        loop.run_until_complete(client.aclose())
    finally:
        loop.close()


def test_an_owner_loop_running_in_another_thread(
    http_url: str, clients: list[httpx.AsyncClient]
) -> None:
    client = httpx.AsyncClient(base_url=http_url)
    loop, thread = running_loop_thread()
    try:
        asyncio.run_coroutine_threadsafe(_get(client, "/"), loop).result(10)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            on_new_loop(lambda: _get(client, "/"))
        assert excinfo.value.record["cause"] == "running-loop"
        assert "TestClient run the application on an event loop of their own" in str(excinfo.value)
        asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(10)
    finally:
        stop_loop_thread(loop, thread)


def test_outside_pytest_the_cause_is_the_asyncio_run_pattern(
    http_url: str, clients: list[httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loopguard._context.in_pytest", False)
    client = httpx.AsyncClient()
    clients.append(client)
    on_new_loop(lambda: _get(client, f"{http_url}/"))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _get(client, f"{http_url}/"))
    assert excinfo.value.record["cause"] == "closed-loop-run"
    assert excinfo.value.used_during is None
    assert "several asyncio.run() calls (one per job or command)" in str(excinfo.value)


def test_a_client_used_through_test_clients_loops_gets_test_clients_cause(
    http_url: str, clients: list[httpx.AsyncClient]
) -> None:
    """An app's client made once (at import, say) and used by its endpoint through Starlette's
    TestClient without ``with``: each request runs on a new loop of TestClient's, so the
    second is stopped with TestClient's cause in the client's words (``aclose()``)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    upstream = httpx.AsyncClient()
    clients.append(upstream)

    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse({"status": (await upstream.get(f"{http_url}/")).status_code})

    client = TestClient(Starlette(routes=[Route("/", endpoint)]))
    assert client.get("/").json() == {"status": 200}
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        client.get("/")
    assert (excinfo.value.code, excinfo.value.record["cause"]) == ("LG108", "test-client-request")
    message = str(excinfo.value)
    assert (
        "likely cause:  Starlette's TestClient, used without `with`, runs the application on a "
        "new event loop for every request, in a thread of its own (an anyio blocking portal), "
        "while the client is created once, outside the app's lifespan" in message
    )
    assert (
        "fix:           use `with TestClient(app) as client:` (one loop for the whole block) "
        "and create the client in the app's lifespan, ending it with `await client.aclose()`; "
        in message
    )
    assert "Starlette TestClient's loop for one request" in message


# -- warn mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_heals_idle_connections_of_a_closed_loop(
    http_url: str, clients: list[httpx.AsyncClient], log_file: Path, mode: str
) -> None:
    """The stale keep-alive connection is closed without I/O (no ResourceWarning: the run
    has filterwarnings = error), the request goes out on a new connection of the new loop,
    and each new loop is warned about once."""
    key = new_key("heal")
    client = httpx.AsyncClient(base_url=http_url)
    clients.append(client)
    first_port = on_new_loop(lambda: _get(client, f"/hit/{key}"))[0]
    with written(log_file) as out:

        async def twice() -> list[str]:
            return [await _get(client, f"/hit/{key}"), await _get(client, f"/hit/{key}")]

        ports = on_new_loop(twice)[0]
        third = on_new_loop(lambda: _get(client, f"/hit/{key}"))[0]
    assert ports[0] == ports[1] != first_port  # a new connection, kept alive on loop 2
    assert third not in (first_port, ports[0])
    assert hits(http_url, key) == 4
    assert out.codes() == ["LG108", "LG108"]
    assert [(e["action"], e["released"], e["sockets_closed"]) for e in out.events] == [
        ("warned", 1, 1),
        ("warned", 1, 1),
    ]
    assert [w.category for w in out.warnings] == [loopguard.LoopMismatchWarning] * 2
    assert out.warnings[0].filename == __file__ and out.warnings[0].lineno == REQUEST_LINE
    assert "its 1 pooled connection(s) of loop #" in str(out.warnings[0].message)
    assert "were closed without I/O (1 socket(s)), and it now belongs to loop #" in str(
        out.warnings[0].message
    )


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_only_warns_while_a_response_is_open_on_the_old_loop(
    http_url: str, clients: list[httpx.AsyncClient], log_file: Path, mode: str
) -> None:
    """A streamed response still open on the (idle) owner loop: its connection is in use, so
    nothing is dropped; the request goes ahead (on a new connection) after one warning."""
    client = httpx.AsyncClient(base_url=http_url)
    clients.append(client)
    loop = asyncio.new_event_loop()
    try:
        response = loop.run_until_complete(
            client.send(client.build_request("GET", "/stream"), stream=True)
        )
        key = new_key("inuse")
        with written(log_file) as out:

            async def twice() -> list[str]:
                return [await _get(client, f"/hit/{key}"), await _get(client, f"/hit/{key}")]

            on_new_loop(twice)
        assert hits(http_url, key) == 2
        assert [(e["action"], e.get("released")) for e in out.events] == [("warned", None)]
        assert "loopguard cannot drop them safely now (one is in use, or their loop is " in str(
            out.warnings[0].message
        )
        assert loop.run_until_complete(response.aread()) == b"part 1\npart 2\n"
        loop.run_until_complete(response.aclose())
    finally:
        _shut_down(client)
        loop.close()


# -- silence on correct code ------------------------------------------------------------------


def test_a_client_per_job_closed_on_its_loop_is_silent(
    http_url: str, mode: str, log_file: Path
) -> None:
    async def job() -> str:
        async with httpx.AsyncClient(base_url=http_url) as client:
            return await _get(client, "/")

    with silence_checked(log_file):
        for _ in range(3):
            assert asyncio.run(job()) == "ok"


def test_one_client_on_one_loop_for_the_whole_run_is_silent(
    http_url: str, mode: str, log_file: Path
) -> None:
    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=http_url) as client:
            results = [await _get(client, "/") for _ in range(3)]
            results += await asyncio.gather(*(_get(client, "/") for _ in range(5)))
            return results

    with silence_checked(log_file):
        assert asyncio.run(main()) == ["ok"] * 8


def test_a_client_that_keeps_no_connection_may_cross_loops_silently(
    http_url: str, clients: list[httpx.AsyncClient], mode: str, log_file: Path
) -> None:
    """No keep-alive connection left in the pool: nothing of the old loop is in it."""
    client = httpx.AsyncClient(base_url=http_url, limits=httpx.Limits(max_keepalive_connections=0))
    clients.append(client)
    with silence_checked(log_file):
        for _ in range(3):
            assert on_new_loop(lambda: _get(client, "/"))[0] == "ok"


def test_no_loop_running_checks_nothing(http_url: str, clients: list[httpx.AsyncClient]) -> None:
    """A pool driven with no running loop (anyio's other backends, a plain coroutine send())
    is not asyncio's business: nothing is bound."""
    client = httpx.AsyncClient(base_url=http_url)
    clients.append(client)
    pool = _pools(client)[0]
    coroutine = pool.handle_async_request(httpcore.Request("GET", f"{http_url}/"))
    coroutine.close()
    facts = _httpx.POOLS.get(pool)
    assert facts is not None and facts.binding is None


# -- what loopguard changes, and what it keeps --------------------------------------------------


def test_uninstall_restores_every_httpx_attribute_exactly() -> None:
    def handle_stays_a_coroutine_function() -> None:
        assert asyncio.iscoroutinefunction(httpcore.AsyncConnectionPool.handle_async_request)

    changed = install_round_trip(
        (httpx.AsyncClient, httpcore.AsyncConnectionPool, httpx.Client),
        handle_stays_a_coroutine_function,
    )
    assert changed == ["AsyncClient.__init__", "AsyncConnectionPool.handle_async_request"]


def test_pools_are_held_weakly(http_url: str) -> None:
    before = len(_httpx.POOLS)

    async def use_and_close() -> None:
        async with httpx.AsyncClient(base_url=http_url) as client:
            await _get(client, "/")

    for _ in range(20):
        asyncio.run(use_and_close())
    gc.collect()
    assert len(_httpx.POOLS) == before


def test_a_client_created_before_install_is_guarded_with_its_site_unknown(
    http_url: str, clients: list[httpx.AsyncClient]
) -> None:
    loopguard.uninstall()
    client = httpx.AsyncClient(base_url=http_url)
    clients.append(client)
    loopguard.install("raise")
    on_new_loop(lambda: _get(client, "/"))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        on_new_loop(lambda: _get(client, "/"))
    assert excinfo.value.created_at is None
    assert "created at:    unknown: it was created before loopguard was installed" in str(
        excinfo.value
    )


def test_off_httpx_is_neither_imported_nor_patched() -> None:
    """Not installed: the libraries are untouched.  Installed before httpx is imported:
    loopguard waits for the import, it never imports httpx (or aiohttp) itself."""
    code = textwrap.dedent(
        """\
        import sys
        import loopguard
        loopguard.install()
        print("httpx" in sys.modules, "aiohttp" in sys.modules)
        loopguard.uninstall()
        import httpx, httpcore, aiohttp
        print(
            [name for name, attr in (
                ("AsyncClient.__init__", httpx.AsyncClient.__init__),
                ("handle_async_request", httpcore.AsyncConnectionPool.handle_async_request),
                ("ClientSession.__init__", aiohttp.ClientSession.__init__),
                ("ClientSession._request", aiohttp.ClientSession._request),
            ) if hasattr(attr, "__loopguard_wrapped__")]
        )
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False False", "[]"]
