"""The redis.asyncio guard (LG110), driven directly against a real redis-server.

Plain (sync) tests that make and close their own event loops with ``asyncio.run()`` /
``asyncio.new_event_loop()``; nothing mocks redis-py or the loop: the loop binding only exists
on real sockets.  The ``_guard`` fixture (conftest.py) installs loopguard in the test's
``mode``.  Clients whose connections outlive their loop go into ``leftovers``, whose teardown
closes their sockets without touching a dead loop (the run has ``filterwarnings = error``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Optional, TypeVar, cast

import pytest
import redis.asyncio as redis
import structlog
from guard_helpers import (
    XDIST_FIELDS,
    current_test_id,
    display_path,
    install_round_trip,
    marker_line,
    silence_checked,
    written,
)
from redis.asyncio.client import PubSub, Redis
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool
from redis.asyncio.sentinel import Sentinel
from redisserver import throwaway_sentinel
from teststack import PYTEST_ASYNCIO, REDIS

import loopguard
from loopguard import _release
from loopguard._loops import loop_id
from loopguard.integrations import _redis_facts

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``

MODES = ["raise", "warn"]
THIS_FILE = display_path(__file__)
REPO = Path(__file__).resolve().parent.parent
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


T = TypeVar("T")


def _co(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    """redis-py types its asyncio commands as Awaitable; asyncio.run() wants a coroutine (and
    it is one: a cast, not a wrapper, so no frame of this file is added to the call)."""
    return cast("Coroutine[Any, Any, T]", awaitable)


@pytest.fixture(autouse=True)
def _current_loop_on_python_3_9() -> Iterator[None]:
    """Python 3.9's asyncio.Lock() (redis-py builds locks in its constructors) asks
    get_event_loop(), which raises once an asyncio.run() has ended in this thread; 3.10+ binds
    locks lazily.  A current (not running) loop lets these tests build clients outside a loop
    there too, as a module-level client is built at import."""
    if sys.version_info >= (3, 10):
        yield
        return
    loop = asyncio.new_event_loop()  # type: ignore[unreachable, unused-ignore]
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _connections(client: Any) -> list[Any]:
    pool = client.connection_pool
    found = [*pool._available_connections, *pool._in_use_connections]
    for holder in (client, getattr(client, "_pubsub", None)):
        conn = getattr(holder, "connection", None)
        if conn is not None and conn not in found:
            found.append(conn)
    return found


@pytest.fixture
def leftovers() -> Iterator[list[Any]]:
    """Clients (or pubsubs) whose connections may outlive their loop: closed without I/O."""
    items: list[Any] = []
    yield items
    for item in items:
        conns = [item.connection] if isinstance(item, PubSub) else _connections(item)
        for conn in conns:
            if conn is not None and conn._writer is not None:
                _redis_facts.drop_without_io(conn)
        asyncio.run(item.aclose())  # nothing is connected any more: no I/O


def _server_commands(url: str) -> dict[str, int]:
    """How many times the server ran each command (asked on a connection of its own)."""

    async def ask() -> dict[str, int]:
        async with redis.Redis.from_url(url) as admin:
            stats = await admin.info("commandstats")
        return {name: entry["calls"] for name, entry in stats.items()}

    return asyncio.run(ask())


_HANDSHAKE = ("cmdstat_client|setinfo", "cmdstat_client", "cmdstat_hello", "cmdstat_info")


def _differences(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between the two counts, but for the asking connection's own."""
    return {
        name: calls - before.get(name, 0)
        for name, calls in after.items()
        if calls != before.get(name, 0) and name not in _HANDSHAKE
    }


# -- the bug, without loopguard -------------------------------------------------------------


def _cached_client_jobs(url: str) -> list[str]:
    """A module-level client shared by three asyncio.run() jobs: what each job ends with."""
    client = redis.Redis.from_url(url)

    async def job(n: int) -> str:
        await client.set("lg110:k", n)
        return str(await client.get("lg110:k"))

    outcomes = []
    transports = []
    for n in range(3):
        try:
            outcomes.append(asyncio.run(job(n)))
        except Exception as exc:  # the bug's symptom, or loopguard's report of it
            outcomes.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        transports += [c._writer.transport for c in _connections(client) if c._writer]
    for conn in _connections(client):
        if conn._writer is not None:
            _redis_facts.drop_without_io(conn)
    _close_leaked(transports)
    return outcomes


def _close_leaked(transports: list[Any]) -> None:
    """redis-py's fallout of the bug: transports it gave up on while their loop was closed
    (their sockets would warn when collected).  Closed here without a loop."""
    for transport in transports:
        if getattr(transport, "_sock", None) is not None:
            _release.close_transport(transport)


def test_bug_without_loopguard_is_event_loop_closed(redis_url: str) -> None:
    """Unguarded, the second job fails deep inside redis-py's stream (its connection's loop
    is closed); redis-py drops the connection then, so the third job works again."""
    loopguard.uninstall()
    outcomes = _cached_client_jobs(redis_url)
    assert outcomes == ["b'0'", "RuntimeError: Event loop is closed", "b'2'"]


def test_bug_of_an_idle_loop_without_loopguard(redis_url: str, leftovers: list[Any]) -> None:
    """Unguarded, a client whose connection belongs to a loop still open fails with asyncio's
    "attached to a different loop" (or hangs on a reply the other loop reads)."""
    loopguard.uninstall()
    client = redis.Redis.from_url(redis_url)
    leftovers.append(client)
    loop_a = asyncio.new_event_loop()
    try:
        loop_a.run_until_complete(client.set("lg110:k", "a"))
        transports = [c._writer.transport for c in _connections(client)]
        with pytest.raises(RuntimeError, match="attached to a different loop"):
            asyncio.run(asyncio.wait_for(client.get("lg110:k"), 5))
        loop_a.run_until_complete(client.aclose())
    finally:
        loop_a.close()
        _close_leaked(transports)


# -- raise mode -----------------------------------------------------------------------------


def _job_with(client: Any, loops: Optional[list[Any]] = None) -> Any:
    async def job() -> Any:
        if loops is not None:
            loops.append(asyncio.get_running_loop())
        await client.set("lg110:k", "v")  # use-line
        return await client.get("lg110:k")

    return job()


def test_cached_client_on_a_second_asyncio_run_raises_before_any_io(
    redis_url: str, leftovers: list[Any], request: pytest.FixtureRequest
) -> None:
    """The second job gets LoopMismatchError at its first command with every fact exact; the
    server sees nothing of it, and the connection stays in the pool as it was."""
    client = redis.Redis.from_url(redis_url)  # create-line
    leftovers.append(client)
    first: list[Any] = []
    assert asyncio.run(_job_with(client, first)) == b"v"
    [conn] = _connections(client)
    before = _server_commands(redis_url)
    loops: list[Any] = []
    raises = pytest.raises(loopguard.LoopMismatchError)
    with structlog.testing.capture_logs() as logs, raises as excinfo:
        asyncio.run(_job_with(client, loops))
    assert _differences(before, _server_commands(redis_url)) == {}  # nothing reached it
    err = excinfo.value
    call_id = current_test_id(request)
    assert isinstance(err, RuntimeError)
    assert err.code == "LG110"
    assert err.resource == "redis.asyncio client"
    assert err.url == redis_url
    assert err.pool_class == "ConnectionPool"
    assert err.created_at == f"{THIS_FILE}:{marker_line(__file__, 'create-line')}"
    assert err.created_in == "test_cached_client_on_a_second_asyncio_run_raises_before_any_io"
    assert err.created_during == err.bound_during == err.used_during == call_id
    use_line = marker_line(__file__, "use-line")
    assert err.bound_at == f"{THIS_FILE}:{use_line} in job"
    assert err.used_at == f"{THIS_FILE}:{use_line} in job"
    assert err.owner_loop_closed is True
    assert err.owner_loop_id == loop_id(first[0])
    assert err.current_loop_id == loop_id(loops[0])
    assert err.record["operation"] == "SET"
    assert err.record["cause"] == "closed-loop-test"
    [entry] = [e for e in logs if e["event"] == "loopguard.loop_mismatch"]
    assert {k: entry[k] for k in LOG_KEYS} == err.record
    assert entry["log_level"] == "error"
    # Untouched: the same connection, still connected to the closed loop, back in the pool.
    assert client.connection_pool._available_connections == [conn]
    assert conn._writer is not None and conn._writer._loop is first[0]


def test_message_is_exact(
    redis_url: str, leftovers: list[Any], request: pytest.FixtureRequest
) -> None:
    client = redis.Redis.from_url(redis_url)  # message-create-line
    leftovers.append(client)
    first: list[Any] = []
    asyncio.run(_job_with(client, first))
    loops: list[Any] = []
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_job_with(client, loops))
    owner, current = loop_id(first[0]), loop_id(loops[0])
    call_id = current_test_id(request)
    create = marker_line(__file__, "message-create-line")
    use = marker_line(__file__, "use-line")
    assert str(excinfo.value).splitlines() == [
        f"redis.asyncio client used on event loop #{current}, but its connections belong to "
        f"loop #{owner}; stopped before any I/O.",
        f"  client:        {redis_url} (ConnectionPool)",
        f"  created at:    {THIS_FILE}:{create} in test_message_is_exact (during {call_id}, "
        "no event loop running)",
        f"  bound:         first connection opened during {call_id}, at {THIS_FILE}:{use} in "
        f"job, on loop #{owner}, which is now closed",
        f"  used now:      during {call_id} on loop #{current}, at {THIS_FILE}:{use} in job (SET)",
        "  likely cause:  the client outlived the event loop its connections were opened on: "
        "it is cached (a module-level client, an @lru_cache factory, or a client built once at "
        "import) while pytest-asyncio gives each test a new loop.",
        "  fix:           create the client in an async fixture on the test's loop and `await "
        "client.aclose()` in its teardown, or run every test that uses it on one loop "
        "(loop_scope=).",
        "  (Background on this error: `loopguard explain LG110`, "
        "or LG110 on the Error codes page of the docs)",
    ]


def test_a_client_used_through_test_clients_loops_gets_test_clients_cause(
    redis_url: str, leftovers: list[Any]
) -> None:
    """An app's client made once and used by its endpoint through Starlette's TestClient
    without ``with``: each request runs on a new loop of TestClient's, so the second is
    stopped with TestClient's cause in the client's words (``aclose()``)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    client = redis.Redis.from_url(redis_url)
    leftovers.append(client)

    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse({"pong": await _co(client.ping())})

    app_client = TestClient(Starlette(routes=[Route("/", endpoint)]))
    assert app_client.get("/").json() == {"pong": True}
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        app_client.get("/")
    assert (excinfo.value.code, excinfo.value.record["cause"]) == ("LG110", "test-client-request")
    message = str(excinfo.value)
    assert "while the client is created once, outside the app's lifespan" in message
    assert "create the client in the app's lifespan, ending it with `await client.aclose()`" in (
        message
    )


def test_connection_of_an_idle_loop_stays_usable_by_its_loop(
    redis_url: str, leftovers: list[Any]
) -> None:
    """raise mode leaves the connection to its own loop: that loop goes on using it."""
    client = redis.Redis.from_url(redis_url)
    leftovers.append(client)
    loop_a = asyncio.new_event_loop()
    try:
        loop_a.run_until_complete(client.set("lg110:k", "a"))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_co(client.get("lg110:k")))
        assert excinfo.value.record["cause"] == "idle-loop-test"
        assert "which is still open but not running" in str(excinfo.value)
        assert loop_a.run_until_complete(client.get("lg110:k")) == b"a"
        loop_a.run_until_complete(client.aclose())
    finally:
        loop_a.close()


def test_pipeline_pubsub_and_single_connection_clients_are_stopped(
    redis_url: str, leftovers: list[Any]
) -> None:
    """A pipeline (a checkout), a pubsub and a single-connection client (connections held
    outside the pool) are each stopped on a foreign loop, before any I/O."""
    client = redis.Redis.from_url(redis_url)
    single = redis.Redis.from_url(redis_url, single_connection_client=True)
    pubsub = redis.Redis.from_url(redis_url).pubsub()  # its own pool: client's keeps its one
    leftovers.extend([client, single, pubsub])

    async def bind() -> None:
        await client.set("lg110:k", "v")
        await single.set("lg110:k", "v")
        await pubsub.subscribe("lg110:channel")
        assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"

    async def use_pipeline() -> Any:
        async with client.pipeline() as pipe:
            return await cast(Any, pipe).set("lg110:k", "w").get("lg110:k").execute()

    asyncio.run(bind())
    before = _server_commands(redis_url)
    for make, operation in (
        (use_pipeline, "pipeline execute()"),
        (lambda: single.get("lg110:k"), "GET"),
        (lambda: pubsub.get_message(timeout=0.1), "PubSub.get_message"),
        (lambda: pubsub.subscribe("lg110:other"), "SUBSCRIBE"),
    ):
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_co(make()))
        assert excinfo.value.record["operation"] == operation
        assert excinfo.value.resource == "redis.asyncio client"
        assert excinfo.value.created_at is not None
    assert _differences(before, _server_commands(redis_url)) == {}


@pytest.fixture(scope="module")
def sentinel_address(redis_url: str) -> Iterator[tuple[str, int]]:
    """A real Redis Sentinel monitoring the test server as ``mymaster``."""
    with throwaway_sentinel(redis_url) as address:
        host, _, port = address.rpartition(":")
        yield host, int(port)


def test_sentinel_client_is_stopped(
    sentinel_address: tuple[str, int], leftovers: list[Any]
) -> None:
    """A client of Sentinel.master_for() (a SentinelConnectionPool, found through a real
    sentinel) is checked like any pooled client, its creation site the master_for() line."""
    sentinel = Sentinel([sentinel_address])
    client = sentinel.master_for("mymaster")  # sentinel-line
    leftovers.extend([client, *sentinel.sentinels])  # (clients of the sentinel itself)
    asyncio.run(_co(client.set("lg110:k", "v")))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_co(client.get("lg110:k")))
    err = excinfo.value
    assert (err.pool_class, err.url) == ("SentinelConnectionPool", "redis+sentinel://mymaster/0")
    assert err.created_at == f"{THIS_FILE}:{marker_line(__file__, 'sentinel-line')}"
    assert err.record["operation"] == "GET"


def test_blocking_pool_client_is_stopped(redis_url: str, leftovers: list[Any]) -> None:
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=2)  # blocking-line
    client = redis.Redis(connection_pool=pool)
    leftovers.append(client)
    asyncio.run(_co(client.set("lg110:k", "v")))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_co(client.get("lg110:k")))
    assert excinfo.value.pool_class == "BlockingConnectionPool"
    assert excinfo.value.created_at == f"{THIS_FILE}:{marker_line(__file__, 'blocking-line')}"


def _host_port(url: str) -> dict[str, Any]:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return {"host": host, "port": int(port)}


# -- warn mode ------------------------------------------------------------------------------


async def _ping_and_close(client: Any) -> None:
    await client.ping()
    await client.aclose()


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_heals_a_client_of_a_closed_loop(
    redis_url: str, log_file: Path, request: pytest.FixtureRequest
) -> None:
    """warn: the record and one warning per client and loop, at the user's line; the stale
    connection is closed without I/O and the job goes on, on a new connection."""
    client = redis.Redis.from_url(redis_url)
    first: list[Any] = []
    asyncio.run(_job_with(client, first))
    [stale] = _connections(client)
    stale_transport = stale._writer.transport
    loops: list[Any] = []
    with written(log_file) as out:
        assert asyncio.run(_job_with(client, loops)) == b"v"
    owner, current = loop_id(first[0]), loop_id(loops[0])
    [warning] = out.warnings
    assert warning.category is loopguard.LoopMismatchWarning
    assert (warning.filename, warning.lineno) == (__file__, marker_line(__file__, "use-line"))
    assert str(warning.message).splitlines()[0] == (
        f"redis.asyncio client used on event loop #{current}, but its connections belong to "
        f"loop #{owner}; its connections of loop #{owner} were closed without I/O, and it now "
        f"belongs to loop #{current}."
    )
    assert out.codes() == ["LG110"]
    [entry] = out.events
    assert (entry["action"], entry["released"], entry["sockets_closed"]) == ("warned", 1, 1)
    assert stale_transport.is_closing() and stale_transport._sock is None
    # It belongs to the second loop now (bound there, in this test): the next job is warned
    # about once more, then healed again; closed on its own loop, nothing is left open.
    with written(log_file) as out:
        asyncio.run(_ping_and_close(client))
    [entry] = out.events
    assert (entry["owner_loop_id"], entry["bound_during"]) == (
        current,
        current_test_id(request),
    )


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_heals_idle_pooled_connections_of_the_old_loop(
    redis_url: str, log_file: Path
) -> None:
    """Every idle connection of the old loop is dropped, not only the one taken."""

    async def two_connections() -> Any:
        # Built on the loop whose tasks contend for its pool (Python 3.9 binds locks there).
        client = redis.Redis.from_url(redis_url)
        await asyncio.gather(client.blpop(["lg110:none"], timeout=0.2), client.ping())
        return client

    client = asyncio.run(two_connections())
    assert len(_connections(client)) == 2
    with written(log_file) as out:
        asyncio.run(_ping_and_close(client))
    [entry] = out.events
    assert (entry["released"], entry["sockets_closed"]) == (2, 2)
    assert all(conn._writer is None for conn in _connections(client))


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_leaves_a_running_loop_alone(redis_url: str, leftovers: list[Any]) -> None:
    """A connection of a loop running in another thread cannot be closed from here: warned,
    not healed (its socket stays open), and the call goes ahead."""
    client = redis.Redis.from_url(redis_url, single_connection_client=True)
    leftovers.append(client)
    loop_a = asyncio.new_event_loop()
    thread = threading.Thread(target=loop_a.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(_co(client.set("lg110:k", "a")), loop_a).result(5)
        running = "cannot close connections of a running loop"
        warns = pytest.warns(loopguard.LoopMismatchWarning, match=running)
        with structlog.testing.capture_logs() as logs, warns:
            try:  # redis-py's own error may follow, or the reply reaches this loop in time
                asyncio.run(asyncio.wait_for(client.get("lg110:k"), 2))
            except Exception as exc:
                assert not isinstance(exc, loopguard.LoopMismatchError)
        [entry] = [e for e in logs if e["event"] == "loopguard.loop_mismatch"]
        assert (entry["action"], entry["cause"]) == ("warned", "running-loop")
        assert "released" not in entry and "sockets_closed" not in entry  # nothing closed
    finally:
        loop_a.call_soon_threadsafe(loop_a.stop)
        thread.join(5)
        loop_a.run_until_complete(client.aclose())
        loop_a.close()


# -- silent on correct code -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_client_per_job_closed_in_it_is_silent(redis_url: str, log_file: Path) -> None:
    async def job() -> Any:
        async with redis.Redis.from_url(redis_url) as client:
            await client.set("lg110:k", "v")
            async with client.pipeline() as pipe:
                await cast(Any, pipe).get("lg110:k").execute()
            return await client.get("lg110:k")

    with silence_checked(log_file):
        for _ in range(3):
            assert asyncio.run(job()) == b"v"


@pytest.mark.parametrize("mode", MODES)
def test_client_closed_then_reused_on_a_new_loop_is_silent(redis_url: str, log_file: Path) -> None:
    """aclose() on its loop leaves nothing of that loop: the next loop may use the client."""
    client = redis.Redis.from_url(redis_url)
    single = redis.Redis.from_url(redis_url, single_connection_client=True)

    async def job() -> Any:
        try:
            await single.set("lg110:k", "v")
            return await client.get("lg110:k")
        finally:
            await single.aclose()
            await client.aclose()

    with silence_checked(log_file):
        for _ in range(3):
            assert asyncio.run(job()) == b"v"


@pytest.mark.parametrize("mode", MODES)
def test_one_client_on_one_loop_for_the_whole_run_is_silent(redis_url: str, log_file: Path) -> None:
    loop = asyncio.new_event_loop()

    async def make() -> tuple[Any, Any]:  # on the loop that uses them, as a program does
        plain = redis.Redis.from_url(redis_url)
        return plain, redis.Redis.from_url(redis_url, single_connection_client=True)

    client, single = loop.run_until_complete(make())

    async def work() -> None:
        await asyncio.gather(*(client.incr("lg110:n") for _ in range(20)))
        await single.set("lg110:k", "v")
        async with client.pipeline(transaction=True) as pipe:
            await pipe.get("lg110:k").incr("lg110:n").execute()
        async with client.pubsub() as pubsub:
            await pubsub.subscribe("lg110:c")
            await client.publish("lg110:c", "hello")
            kinds: list[str] = []
            while len(kinds) < 2:
                message = await pubsub.get_message(timeout=1)
                if message:
                    kinds.append(message["type"])
            assert kinds == ["subscribe", "message"]

    try:
        with silence_checked(log_file):
            for _ in range(3):
                loop.run_until_complete(work())
            loop.run_until_complete(single.aclose())
            loop.run_until_complete(client.aclose())
    finally:
        loop.close()


# -- the patches: off, uninstall, weak references --------------------------------------------

_PATCHED = (ConnectionPool, AbstractConnection, PubSub, Redis)


def test_uninstall_restores_every_redis_attribute_exactly() -> None:
    def wrappers_stay_coroutine_functions() -> None:
        if sys.version_info >= (3, 12):  # inspect.markcoroutinefunction()
            assert asyncio.iscoroutinefunction(ConnectionPool.ensure_connection)
            assert asyncio.iscoroutinefunction(Redis.initialize)

    changed = install_round_trip(_PATCHED, wrappers_stay_coroutine_functions)
    assert changed == [
        "ConnectionPool.__init__",
        "ConnectionPool.ensure_connection",
        "PubSub.execute_command",
        "PubSub.parse_response",
        "Redis.initialize",
    ]


def test_off_means_redis_is_neither_imported_nor_patched(tmp_path: Path) -> None:
    """Installed without redis imported: nothing of redis is imported; imported later with
    loopguard off: nothing is patched."""
    script = textwrap.dedent(
        """
        import sys
        import loopguard
        loopguard.install()
        assert "redis" not in sys.modules, "loopguard imported redis"
        loopguard.uninstall()
        from redis.asyncio.connection import ConnectionPool
        assert ConnectionPool.ensure_connection.__module__ == "redis.asyncio.connection"
        assert ConnectionPool.__init__.__module__ == "redis.asyncio.connection"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_clients_and_connections_are_held_weakly(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    asyncio.run(_ping_and_close(client))
    pool_ref = weakref.ref(client.connection_pool)
    [conn] = _connections(client)
    conn_ref = weakref.ref(conn)
    assert len(_redis_facts.POOLS) >= 1 and len(_redis_facts.CONNECTIONS) >= 1
    del client, conn
    gc.collect()
    assert pool_ref() is None and conn_ref() is None
    assert len(_redis_facts.POOLS) == 0 and len(_redis_facts.CONNECTIONS) == 0


# -- creation sites -------------------------------------------------------------------------


def test_creation_site_is_the_users_line_when_a_library_builds_the_client(
    redis_url: str, tmp_path: Path, leftovers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client built inside an installed library (here a module under a site-packages
    directory) and a subclass of Redis are traced back to the user's line that asked."""
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / "lg110_cachelib.py").write_text(
        "import redis.asyncio as redis\n\n\n"
        "class Cache:\n"
        "    def __init__(self, url):\n"
        "        self.client = redis.Redis.from_url(url)\n\n\n"
        "def make_cache(url):\n"
        "    return Cache(url)\n"
    )
    monkeypatch.syspath_prepend(str(library))
    lg110_cachelib = importlib.import_module("lg110_cachelib")

    class MyRedis(redis.Redis):
        def __init__(self, url: str) -> None:
            super().__init__(connection_pool=None, **_host_port(url))

    cache = lg110_cachelib.make_cache(redis_url)  # library-line
    mine = MyRedis(redis_url)  # subclass-line
    leftovers.extend([cache.client, mine])
    for client, marker in ((cache.client, "library-line"), (mine, "subclass-line")):
        asyncio.run(_co(client.ping()))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(_co(client.ping()))
        assert excinfo.value.created_at == f"{THIS_FILE}:{marker_line(__file__, marker)}"


def test_client_created_before_install_is_guarded_with_its_site_unknown(
    redis_url: str, leftovers: list[Any]
) -> None:
    loopguard.uninstall()
    client = redis.Redis.from_url(redis_url)
    leftovers.append(client)
    asyncio.run(_co(client.ping()))
    loopguard.install("raise")
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(_co(client.ping()))
    assert excinfo.value.created_at is None
    assert (
        "created at:    unknown: the client was created before loopguard was installed "
        "(install it earlier: LOOPGUARD=1 or the pytest plugin)"
    ) in str(excinfo.value)


# -- a pytest suite: the summary and `loopguard report` group by client ------------------------

APP_CACHE = """
import functools
import os

import redis.asyncio as redis


@functools.lru_cache
def get_client():
    return redis.Redis.from_url(os.environ["APP_REDIS_URL"])
"""

APP_TESTS = """
from app.cache import get_client


async def test_one():
    assert await get_client().set("lg110:one", 1)


async def test_two():
    assert await get_client().get("lg110:one") == b"1"


async def test_three():
    assert await get_client().incr("lg110:n") >= 1
"""


@pytest.mark.parametrize("plugin_mode", ["off", "1", "warn"])
def test_pytest_suite_with_a_cached_client(
    pytester: pytest.Pytester, redis_env: str, monkeypatch: pytest.MonkeyPatch, plugin_mode: str
) -> None:
    """A cached client and pytest-asyncio's loop per test: unguarded, test_two fails in
    redis-py; LOOPGUARD=1 fails test_two and test_three with LG110 naming app/cache.py and
    test_one, summarised per client, and the log file's report groups them the same way;
    LOOPGUARD=warn heals (every test passes) and warns at each test's line."""
    monkeypatch.setenv("APP_REDIS_URL", redis_env)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    for name in ("LOOPGUARD", "LOOPGUARD_LOG_FILE", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    if plugin_mode != "off":
        monkeypatch.setenv("LOOPGUARD", plugin_mode)
        monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(pytester.path / "lg.jsonl"))
    lines = ["[pytest]", "asyncio_mode = auto", "pythonpath = ."]
    if PYTEST_ASYNCIO >= (0, 24):
        lines.append("asyncio_default_fixture_loop_scope = function")
    pytester.makeini("\n".join(lines) + "\n")
    (pytester.path / "app").mkdir()
    (pytester.path / "app" / "__init__.py").write_text("")
    (pytester.path / "app" / "cache.py").write_text(APP_CACHE.lstrip("\n"))
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_app.py").write_text(APP_TESTS.lstrip("\n"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--tb=short", timeout=120)
    create = 1 + APP_CACHE.lstrip("\n").splitlines().index(
        '    return redis.Redis.from_url(os.environ["APP_REDIS_URL"])'
    )
    text = result.stdout.str()
    if plugin_mode == "off":
        result.assert_outcomes(passed=2, failed=1)
        assert "LoopMismatch" not in text
        assert "Event loop is closed" in text
        return
    if plugin_mode == "warn":
        result.assert_outcomes(passed=3)
        result.stdout.fnmatch_lines(
            [
                "*tests/test_app.py:9: LoopMismatchWarning: redis.asyncio client used on event*",
                "*tests/test_app.py:13: LoopMismatchWarning: redis.asyncio client used on event*",
            ]
        )
        return
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: redis.asyncio client used on event loop #*, but "
            "its connections belong to loop #*; stopped before any I/O.",
            f"E     created at:    app/cache.py:{create} in get_client (during "
            "tests/test_app.py::test_one (call))",
            "*= loopguard =*",
            "2 event-loop mismatches from 1 client:",
            f"  LG110 app/cache.py:{create} in get_client  [{redis_env}]",
            "    2 × raised; first bound during tests/test_app.py::test_one (call)",
            "    used on another loop by 2 test(s):",
            "      tests/test_app.py::test_two",
            "      tests/test_app.py::test_three",
        ]
    )
    assert "Event loop is closed" not in text
    report = subprocess.run(
        [sys.executable, "-m", "loopguard", "report", "--format", "json", "lg.jsonl"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    [group] = json.loads(report.stdout)
    assert (group["code"], group["created_at"], group["url"]) == (
        "LG110",
        f"app/cache.py:{create}",
        redis_env,
    )
    assert (group["resource"], group["count"], group["actions"]) == (
        "redis.asyncio client",
        2,
        {"raised": 2},
    )
    assert group["causes"][0]["fix"].startswith("create the client in an async fixture")
    table = subprocess.run(
        [sys.executable, "-m", "loopguard", "report", "lg.jsonl"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.stdout.splitlines()[0] == "2 loopguard records (2 raised) from 1 client"


# -- test doubles (redis-py's own suite uses them) ------------------------------------------


class _NotAConnection:
    """A connection class of the kind test suites write: no stream, no ``_writer``."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    async def connect(self) -> None:
        pass

    async def can_read(self) -> bool:
        return False

    async def can_read_destructive(self) -> bool:
        return False

    def should_reconnect(self) -> bool:
        return False

    async def re_auth(self) -> None:  # redis-py 8 calls it when a connection is released
        pass


@pytest.mark.parametrize("mode", MODES)
def test_connection_doubles_are_left_alone(redis_url: str, log_file: Path) -> None:
    """A pool of objects that are not redis-py connections, and a connection whose stream is
    a stand-in without a loop of its own: checked out on any loop, nothing is raised, warned or
    logged (redis-py's own test suite does both)."""
    pool = ConnectionPool(connection_class=cast(Any, _NotAConnection))

    class FakeWriter:
        _loop = object()  # not an event loop

    async def checkouts() -> None:
        # redis-py before 5.3 requires a command name, 5.3+ deprecates passing one.
        args = ("PING",) if REDIS < (5, 3) else ()
        conn = await pool.get_connection(*args)  # type: ignore[no-untyped-call, unused-ignore]
        await pool.release(conn)
        real = ConnectionPool.from_url(redis_url).make_connection()  # type: ignore[no-untyped-call, unused-ignore]
        real._writer = FakeWriter()
        pending = ConnectionPool.ensure_connection(pool, real)  # the check runs at the call
        pending.close()  # (never awaited: the stand-in stream cannot be read)
        real._writer = None

    with silence_checked(log_file):
        for _ in range(2):
            asyncio.run(checkouts())
