"""The likely causes of a loop mismatch and their fixes, as the messages say them.

A cause is chosen from the state of the owning loop and whether a test is running
(``likely_cause``); its words depend on what was misused (``causes_for(resource)``): the fix
for an engine is ``dispose()``, for an asyncpg pool ``close()``, for an object registered
with ``loopguard.track()`` whatever its owner does to release it.

Then, for every guard alike, ``_patterns.refine`` may name the pattern that made the loops
differ (Starlette's TestClient, anyio's pytest plugin, a loop per Celery task or
async_to_sync call, a wider-scoped fixture that created the object): those causes
(``PATTERNS``) are worded once, for any resource, with its ``Terms`` (``cause_for``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional


class Cause(NamedTuple):
    text: str  # "likely cause:" in the message
    fix: str  # "fix:" in the message


def likely_cause(owner_state: str, in_test: bool) -> str:
    """``owner_state`` is ``LoopRef.state()``: closed, idle, running or inherited."""
    if owner_state == "running":
        return "running-loop"
    if owner_state == "inherited":
        return "forked-child"
    return f"{owner_state}-loop-{'test' if in_test else 'run'}"


_RUN_ON_FIXTURE_LOOP = (
    'run the test on the fixture\'s loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
    "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope), or give "
    "the {noun} fixture the test's loop scope."
)

ENGINE = {
    "closed-loop-test": Cause(
        "the engine outlived the event loop it was first used on: it is cached (a module-level "
        "engine or async_sessionmaker, or an @lru_cache factory) while pytest-asyncio gives each "
        "test a new loop.",
        "dispose it when its loop ends (`await engine.dispose()` in the teardown of a fixture on "
        "the test's loop), or create it per test in a fixture, or build it with "
        "`poolclass=NullPool` for tests.",
    ),
    "closed-loop-run": Cause(
        "the engine outlived the event loop it was first used on: a module-level or cached "
        "engine is shared by several asyncio.run() calls (one per job or command), each with a "
        "new loop.",
        "`await engine.dispose()` before each asyncio.run() job returns, or create the engine "
        "inside the job, or build it with `poolclass=NullPool`.",
    ),
    "idle-loop-test": Cause(
        "its connections belong to a loop that is still open but not running: typically a "
        "fixture with a wider loop scope (session, package, module or class) than the test "
        "that uses the engine.",
        _RUN_ON_FIXTURE_LOOP.format(noun="engine"),
    ),
    "idle-loop-run": Cause(
        "its connections belong to another event loop that is still open but not running.",
        "use each engine on one loop only: `await engine.dispose()` before switching loops, or "
        "one engine per loop, or `poolclass=NullPool`.",
    ),
    "running-loop": Cause(
        "its connections belong to another event loop that is running right now, most likely "
        "in another thread.",
        "give each thread's loop its own engine, or build the engine with `poolclass=NullPool`.",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop owned these pooled connections "
        "(os.fork() or multiprocessing's fork start method): their sockets are shared with the "
        "parent, and using them here corrupts the parent's connections.",
        "call `engine.sync_engine.dispose(close=False)` in the child before using the engine "
        "(SQLAlchemy's documented recipe for forks, SQLAlchemy 1.4.33 and newer), or create the "
        "engine after the fork, or use the spawn start method.",
    ),
}

# A connection held open (an AsyncConnection, the connection of an AsyncSession in a
# transaction, a stream) and used on a loop other than the one it was checked out on.
HELD_CONNECTION = {
    "closed-loop-test": Cause(
        "the connection outlived the event loop it was checked out on: an AsyncConnection or an "
        "AsyncSession (in a transaction, or streaming a result) is kept by a fixture, a module "
        "global or a cache while pytest-asyncio gives each test a new loop.",
        "open it on the test's loop and close it there: `async with engine.connect() as conn: "
        "yield conn` (or `async with AsyncSession(engine) as session: yield session`) in a "
        "fixture with the test's loop scope.",
    ),
    "closed-loop-run": Cause(
        "the connection outlived the event loop it was checked out on: an AsyncConnection or an "
        "AsyncSession (in a transaction, or streaming a result) kept from one asyncio.run() is "
        "used by the next, on a new loop.",
        "open and close it inside each job (`async with engine.connect()` or `async with "
        "AsyncSession(engine)` in the coroutine that asyncio.run() runs), and open a new one "
        "in the next job.",
    ),
    "idle-loop-test": Cause(
        "it was checked out on a loop that is still open but not running: typically a fixture "
        "with a wider loop scope (session, package, module or class) yields the connection or "
        "session to tests that run on their own loop.",
        _RUN_ON_FIXTURE_LOOP.format(noun="connection or session"),
    ),
    "idle-loop-run": Cause(
        "it was checked out on another event loop that is still open but not running.",
        "use each connection or session on the loop that opened it; open another one for the "
        "new loop.",
    ),
    "running-loop": Cause(
        "it was checked out on another event loop that is running right now, most likely in "
        "another thread.",
        "give each thread's loop its own connection or session, or run the work on the "
        "connection's loop (asyncio.run_coroutine_threadsafe()).",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop checked this connection out "
        "(os.fork() or multiprocessing's fork start method): its socket is shared with the "
        "parent, and using it here corrupts the parent's connection.",
        "open new connections in the child, after the fork (`engine.sync_engine.dispose("
        "close=False)` first), or use the spawn start method.",
    ),
}

_OUTSIDE_LOOP = Cause(
    "asyncpg.create_pool() was called with no event loop running (at import time, in a sync "
    "function or fixture, or before asyncio.run()), so the pool captured the loop "
    "asyncio.get_event_loop() returned, not the loop that later uses it.",
    "create the pool inside the loop that uses it: `pool = await asyncpg.create_pool(...)` in "
    "the coroutine (or async fixture) that needs it, and `await pool.close()` before that loop "
    "ends.",
)

ASYNCPG_POOL = {
    "outside-loop": _OUTSIDE_LOOP,
    "closed-loop-test": Cause(
        "the pool outlived the event loop it was created on: it is kept in a module global or a "
        "cache (created on the first test's loop) while pytest-asyncio gives each test a new "
        "loop.",
        "create the pool in an async fixture on the test's loop and `await pool.close()` in its "
        "teardown, or run every test that uses it on one loop (loop_scope=).",
    ),
    "closed-loop-run": Cause(
        "the pool outlived the event loop it was created on: a module-global pool created "
        "during one asyncio.run() is used by a later asyncio.run() (one per job or command), "
        "on a new loop.",
        "create the pool inside each job and `await pool.close()` before the job returns, or "
        "run every job on one long-lived loop.",
    ),
    "idle-loop-test": Cause(
        "it belongs to a loop that is still open but not running: typically a fixture with a "
        "wider loop scope (session, package, module or class) than the test that uses the pool.",
        _RUN_ON_FIXTURE_LOOP.format(noun="pool"),
    ),
    "idle-loop-run": Cause(
        "it belongs to another event loop that is still open but not running.",
        "use each pool on one loop only: create one pool per loop, and close it on that loop.",
    ),
    "running-loop": Cause(
        "it belongs to another event loop that is running right now, most likely in another "
        "thread.",
        "give each thread's loop its own pool, or run the work on the pool's loop "
        "(asyncio.run_coroutine_threadsafe()).",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop owns the pool (os.fork() or "
        "multiprocessing's fork start method): its connections' sockets are shared with the "
        "parent, and using them here corrupts the parent's connections.",
        "create a new pool in the child, after the fork (and leave the parent's alone), or "
        "use the spawn start method.",
    ),
}

ASYNCPG_CONNECTION = {
    "outside-loop": _OUTSIDE_LOOP,
    "closed-loop-test": Cause(
        "the connection outlived the event loop it was opened on: it is kept in a module global, "
        "a cache or a wider-scoped fixture while pytest-asyncio gives each test a new loop.",
        "open (or acquire) it in an async fixture on the test's loop and close (or release) it "
        "in the fixture's teardown.",
    ),
    "closed-loop-run": Cause(
        "the connection outlived the event loop it was opened on: it was opened during one "
        "asyncio.run() and is used by a later one, on a new loop.",
        "open (or acquire) the connection inside each job and close (or release) it before the "
        "job returns.",
    ),
    "idle-loop-test": Cause(
        "it belongs to a loop that is still open but not running: typically a fixture with a "
        "wider loop scope (session, package, module or class) than the test that uses it.",
        _RUN_ON_FIXTURE_LOOP.format(noun="connection"),
    ),
    "idle-loop-run": Cause(
        "it belongs to another event loop that is still open but not running.",
        "use each connection on the loop that opened it; open another one for the new loop.",
    ),
    "running-loop": Cause(
        "it belongs to another event loop that is running right now, most likely in another "
        "thread.",
        "give each thread's loop its own connection (or pool), or run the work on the "
        "connection's loop (asyncio.run_coroutine_threadsafe()).",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop owns the connection (os.fork() or "
        "multiprocessing's fork start method): its socket is shared with the parent, and "
        "using it here corrupts the parent's connection.",
        "open a new connection in the child, after the fork, or use the spawn start method.",
    ),
}


# psycopg_pool (LG112): the pool's worker tasks die with the loop that opened it, so a pool
# used on a later loop waits for connections nobody opens: a hang, then PoolTimeout.
_PSYCOPG_POOL_IN_LOOP = (
    "open the pool inside the loop that uses it and close it before that loop ends: `async "
    "with AsyncConnectionPool(conninfo, open=False) as pool:`"
)
PSYCOPG_POOL = {
    "closed-loop-test": Cause(
        "the pool outlived the event loop that opened it: it is kept in a module global or a "
        "cache (opened during an earlier test, on that test's loop) while pytest-asyncio gives "
        "each test a new loop; its worker tasks died with that loop, so a connection it has to "
        "open never comes (a hang, then PoolTimeout).",
        "open it in an async fixture on the tests' loop scope (`async with "
        "AsyncConnectionPool(conninfo, open=False) as pool: yield pool`), which closes it "
        "before that loop ends, or run every test that uses it on one loop (loop_scope=).",
    ),
    "closed-loop-run": Cause(
        "the pool outlived the event loop that opened it: a pool opened during one "
        "asyncio.run() is used by a later asyncio.run() (one per job or command), on a new "
        "loop; its worker tasks died with the first loop, so a connection it has to open never "
        "comes (a hang, then PoolTimeout).",
        f"{_PSYCOPG_POOL_IN_LOOP} in each job, or run every job on one long-lived loop.",
    ),
    "idle-loop-test": Cause(
        "it belongs to a loop that is still open but not running: typically a fixture with a "
        "wider loop scope (session, package, module or class) than the test that uses the pool; "
        "its worker tasks only run while that loop does.",
        _RUN_ON_FIXTURE_LOOP.format(noun="pool"),
    ),
    "idle-loop-run": Cause(
        "it belongs to another event loop that is still open but not running; its worker tasks "
        "only run while that loop does.",
        f"use each pool on one loop only: {_PSYCOPG_POOL_IN_LOOP}, one pool per loop.",
    ),
    "running-loop": Cause(
        "it belongs to another event loop that is running right now, most likely in another "
        "thread: its lock, queues and worker tasks are that loop's.",
        "give each thread's loop its own pool, or run the work on the pool's loop "
        "(asyncio.run_coroutine_threadsafe()).",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop opened the pool (os.fork() or "
        "multiprocessing's fork start method): its worker tasks are the parent's, and its "
        "connections' sockets are shared with the parent.",
        "open a new pool in the child, after the fork (and leave the parent's alone), or use "
        "the spawn start method.",
    ),
}


_TEST_CLIENT_THREAD = (
    " (Starlette's and FastAPI's TestClient run the application on an event loop of their own, "
    "in a thread)"
)

HTTPX_CLIENT = {
    "closed-loop-test": Cause(
        "the client outlived the event loop it first sent a request on: it is cached (a "
        "module-level client, an @lru_cache factory, or an SDK client built on it, such as "
        "openai.AsyncOpenAI) while pytest-asyncio gives each test a new loop; its pooled "
        "keep-alive connections belong to the first loop.",
        "create the client inside the test's loop and close it with `async with "
        "httpx.AsyncClient() as client:` (or in an async fixture that ends with `await "
        "client.aclose()`), or run every test that uses it on one loop (loop_scope=).",
    ),
    "closed-loop-run": Cause(
        "the client outlived the event loop it first sent a request on: a module-level or "
        "cached client (or an SDK client built on it) is shared by several asyncio.run() calls "
        "(one per job or command), each with a new loop; its pooled keep-alive connections "
        "belong to the first loop.",
        "create the client inside each job with `async with httpx.AsyncClient() as client:` "
        "(or `await client.aclose()` before the job's loop ends), or run every job on one "
        "long-lived loop.",
    ),
    "idle-loop-test": Cause(
        "its pooled connections belong to a loop that is still open but not running: "
        "typically a fixture with a wider loop scope (session, package, module or class) than "
        "the test that uses the client.",
        _RUN_ON_FIXTURE_LOOP.format(noun="client"),
    ),
    "idle-loop-run": Cause(
        "its pooled connections belong to another event loop that is still open but not running.",
        "use one client per loop: create it inside the loop with `async with "
        "httpx.AsyncClient() as client:`, and `await client.aclose()` before that loop ends.",
    ),
    "running-loop": Cause(
        "its pooled connections belong to another event loop that is running right now, most "
        "likely in another thread" + _TEST_CLIENT_THREAD + ".",
        "give each loop its own client, created inside it (an application's client in its "
        "lifespan, not at import) and closed with `await client.aclose()` before that loop "
        "ends.",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop owns the client's pooled "
        "connections (os.fork() or multiprocessing's fork start method): their sockets are "
        "shared with the parent.",
        "create a new client in the child, after the fork, or use the spawn start method.",
    ),
}

AIOHTTP_SESSION = {
    "outside-loop": Cause(
        "the ClientSession was created with no event loop running (at import time, in a sync "
        "function or fixture, or before asyncio.run()), so it took the loop "
        "asyncio.get_event_loop() returned, not the loop that uses it.",
        "create the session inside the coroutine that uses it: `async with "
        "aiohttp.ClientSession() as session:`.",
    ),
    "closed-loop-test": Cause(
        "the session outlived the event loop it was created on: it is cached (a module-level "
        "session, an @lru_cache factory, or an SDK client built on it) while pytest-asyncio "
        "gives each test a new loop; a ClientSession, its connector and its timers belong to "
        "the loop it was created on.",
        "create the session inside the test's loop and close it with `async with "
        "aiohttp.ClientSession() as session:` (or in an async fixture that ends with `await "
        "session.close()`), or run every test that uses it on one loop (loop_scope=).",
    ),
    "closed-loop-run": Cause(
        "the session outlived the event loop it was created on: a module-level or cached "
        "session (or an SDK client built on it) is shared by several asyncio.run() calls (one "
        "per job or command), each with a new loop.",
        "create the session inside each job with `async with aiohttp.ClientSession() as "
        "session:` (or `await session.close()` before the job's loop ends), or run every job "
        "on one long-lived loop.",
    ),
    "idle-loop-test": Cause(
        "it belongs to a loop that is still open but not running: typically a fixture with a "
        "wider loop scope (session, package, module or class) than the test that uses it.",
        _RUN_ON_FIXTURE_LOOP.format(noun="session"),
    ),
    "idle-loop-run": Cause(
        "it belongs to another event loop that is still open but not running.",
        "use one session per loop: create it inside the loop with `async with "
        "aiohttp.ClientSession() as session:`, and `await session.close()` before that loop "
        "ends.",
    ),
    "running-loop": Cause(
        "it belongs to another event loop that is running right now, most likely in another "
        "thread" + _TEST_CLIENT_THREAD + ".",
        "give each loop its own session, created inside it (an application's session in its "
        "lifespan, not at import) and closed with `await session.close()` before that loop "
        "ends.",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop owns the session (os.fork() or "
        "multiprocessing's fork start method): its connections' sockets are shared with the "
        "parent.",
        "create a new session in the child, after the fork, or use the spawn start method.",
    ),
}


def standard_causes(noun: str, release: str) -> dict[str, Cause]:
    """The causes for any loop-bound ``noun`` (a client, a lock, ...) that ``release`` frees.

    ``release`` completes "…, and {release} before that loop ends", e.g.
    "close it (`await client.aclose()`)".
    """
    return {
        "closed-loop-test": Cause(
            f"the {noun} outlived the event loop it was first used on: it is cached (a "
            "module-level object or an @lru_cache factory) while pytest-asyncio gives each test "
            "a new loop.",
            f"create the {noun} in a fixture on the test's loop and {release} in its teardown, "
            "or run every test that uses it on one loop (loop_scope=).",
        ),
        "closed-loop-run": Cause(
            f"the {noun} outlived the event loop it was first used on: a module-level or cached "
            f"{noun} is shared by several asyncio.run() calls (one per job or command), each "
            "with a new loop.",
            f"create the {noun} inside each job and {release} before the job returns, or run "
            "every job on one long-lived loop.",
        ),
        "idle-loop-test": Cause(
            "it belongs to a loop that is still open but not running: typically a fixture with "
            "a wider loop scope (session, package, module or class) than the test that uses it.",
            _RUN_ON_FIXTURE_LOOP.format(noun=noun),
        ),
        "idle-loop-run": Cause(
            "it belongs to another event loop that is still open but not running.",
            f"use each {noun} on one loop only: one {noun} per loop, and {release} on that loop.",
        ),
        "running-loop": Cause(
            "it belongs to another event loop that is running right now, most likely in another "
            "thread.",
            f"give each thread's loop its own {noun}, or run the work on its loop "
            "(asyncio.run_coroutine_threadsafe()).",
        ),
        "forked-child": Cause(
            f"this process was forked from one whose event loop owns the {noun} (os.fork() or "
            "multiprocessing's fork start method).",
            f"create a new {noun} in the child, after the fork, or use the spawn start method.",
        ),
    }


REDIS_CLIENT = {
    "closed-loop-test": Cause(
        "the client outlived the event loop its connections were opened on: it is cached (a "
        "module-level client, an @lru_cache factory, or a client built once at import) while "
        "pytest-asyncio gives each test a new loop.",
        "create the client in an async fixture on the test's loop and `await client.aclose()` "
        "in its teardown, or run every test that uses it on one loop (loop_scope=).",
    ),
    "closed-loop-run": Cause(
        "the client outlived the event loop its connections were opened on: a module-level or "
        "cached client is shared by several asyncio.run() calls (one per job or command, as "
        "Celery tasks or Django management commands do), each with a new loop.",
        "create the client inside each job and `await client.aclose()` before the job returns "
        "(`async with redis.asyncio.Redis(...) as client:`), or run every job on one "
        "long-lived loop: one client per loop.",
    ),
    "idle-loop-test": Cause(
        "its connections belong to a loop that is still open but not running: typically a "
        "fixture with a wider loop scope (session, package, module or class) than the test "
        "that uses the client.",
        _RUN_ON_FIXTURE_LOOP.format(noun="client"),
    ),
    "idle-loop-run": Cause(
        "its connections belong to another event loop that is still open but not running.",
        "use each client on one loop only: one client per loop, created inside it, and "
        "`await client.aclose()` on that loop before switching loops.",
    ),
    "running-loop": Cause(
        "its connections belong to another event loop that is running right now, most likely "
        "in another thread.",
        "give each thread's loop its own client, or run the work on the client's loop "
        "(asyncio.run_coroutine_threadsafe()).",
    ),
    "forked-child": Cause(
        "this process was forked from one whose event loop owns the client's connections "
        "(os.fork() or multiprocessing's fork start method): their sockets are shared with "
        "the parent, and using them here corrupts the parent's replies.",
        "create a new client in the child, after the fork (and leave the parent's alone), or "
        "use the spawn start method.",
    ),
}


# asyncio's primitive classes as LG111 records name them, and what summaries count them as.
PRIMITIVE_NOUNS = {
    "asyncio.Lock": "lock",
    "asyncio.Event": "event",
    "asyncio.Condition": "condition",
    "asyncio.Semaphore": "semaphore",
    "asyncio.BoundedSemaphore": "semaphore",
    "asyncio.Queue": "queue",
    "asyncio.PriorityQueue": "queue",
    "asyncio.LifoQueue": "queue",
    "asyncio.Barrier": "barrier",
}


def primitive_causes(noun: str) -> dict[str, Cause]:
    """The causes for an asyncio ``noun`` (lock, event, queue, ...), LG111.  The fix is always
    the same idea: create it inside the loop that uses it."""
    inside = f"create the {noun} inside the loop that uses it"
    return {
        "outside-loop": Cause(
            f"the {noun} was created with no event loop running (at import time, as a module "
            "global or class attribute, or in a sync function), so Python 3.9 bound it to the "
            "loop asyncio.get_event_loop() returned then; asyncio.run() and pytest-asyncio run "
            "coroutines on a new loop, where it cannot wait.",
            f"{inside}: in the coroutine (or async fixture) that needs it, or lazily on first "
            f"use from async code (Python 3.10+ binds an unused {noun} to the first loop that "
            "waits on it).",
        ),
        "closed-loop-test": Cause(
            f"the {noun} outlived the event loop asyncio bound it to: it is created once (at "
            "import time, as a module global or class attribute, or in a cached object) while "
            "pytest-asyncio gives each test a new loop.",
            f"{inside}: in the test, in an async fixture on the test's loop, or in the object "
            "the test creates; or run every test that uses it on one loop (loop_scope=).",
        ),
        "closed-loop-run": Cause(
            f"the {noun} outlived the event loop asyncio bound it to: a module-level or cached "
            f"{noun} is shared by several asyncio.run() calls (one per job or command), each "
            "with a new loop.",
            f"{inside}: in the coroutine asyncio.run() runs (or in an object created there), "
            "or run every job on one long-lived loop.",
        ),
        "idle-loop-test": Cause(
            "it is bound to a loop that is still open but not running: typically a fixture with "
            "a wider loop scope (session, package, module or class) than the test, or a "
            f"module-level {noun} shared by tests on different loop scopes.",
            f"{inside} (in the test, or in a fixture with the test's loop scope), or run the "
            'test on that loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
            "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope).",
        ),
        "idle-loop-run": Cause(
            "it is bound to another event loop that is still open but not running.",
            f"{inside}: one {noun} per loop.",
        ),
        "running-loop": Cause(
            "it is bound to another event loop that is running right now, most likely in "
            "another thread: asyncio primitives work on one loop and are not thread-safe.",
            f"give each thread's loop its own {noun}, created inside that loop, or hand the "
            "work to its loop (asyncio.run_coroutine_threadsafe()); between threads, use "
            "threading's primitives or queue.Queue.",
        ),
        "forked-child": Cause(
            f"this process was forked from one whose event loop the {noun} is bound to "
            "(os.fork() or multiprocessing's fork start method).",
            f"{inside}, in the child, or use the spawn start method.",
        ),
    }


# Codes whose records carry no ``cause``: one explanation for the code.
EXPLANATIONS = {
    "LG104": Cause(
        "the engine was disposed on an event loop other than the one its pooled connections "
        "belong to, or outside any loop: their loop could not close them, so loopguard closed "
        "their sockets directly.",
        "dispose the engine on the loop that used it, before that loop ends (`await "
        "engine.dispose()` at the end of the asyncio.run() job, or in the teardown of a fixture "
        "on the tests' loop).",
    ),
    "LG105": Cause(
        "an async fixture hands what it yields, bound to its pytest-asyncio loop, to tests "
        "that run on another loop scope: their use of it fails (an engine in warn mode is "
        "moved to each test's loop instead).",
        "run the tests on the fixture's loop (@pytest.mark.asyncio(loop_scope=...) on them, or "
        "asyncio_default_test_loop_scope), or give the fixture the tests' loop scope.",
    ),
    "LG106": Cause(
        "an event loop closed while the engine's pool still held connections bound to it: "
        "they can never be closed properly (a connection leak).",
        "`await engine.dispose()` before the loop ends: at the end of the asyncio.run() job, or "
        "in the teardown of a fixture on the tests' loop.",
    ),
}

# -- the patterns behind the loops, worded for any resource ---------------------------------


class Terms(NamedTuple):
    """How the pattern causes speak of one resource."""

    noun: str  # "engine"
    release: str  # what frees it on its loop: "`await engine.dispose()`"
    alternative: str = ""  # a way it may cross loops at all: ", or build it with ..."


_TERMS: dict[str, Terms] = {
    "SQLAlchemy AsyncEngine": Terms(
        "engine", "`await engine.dispose()`", ", or build it with `poolclass=NullPool`"
    ),
    "asyncpg Pool": Terms("pool", "`await pool.close()`"),
    "asyncpg Connection": Terms("connection", "`await conn.close()`"),
    "httpx AsyncClient": Terms("client", "`await client.aclose()`"),
    "aiohttp ClientSession": Terms("session", "`await session.close()`"),
    "redis.asyncio client": Terms("client", "`await client.aclose()`"),
    "redis.asyncio connection": Terms("client", "`await client.aclose()`"),
}

# Placeholders: {noun}, {release}, {alternative} (Terms), {created_by} (the record's fixture,
# "the session-scoped fixture 'engine' at conftest.py:12", or "a fixture").
_ASGI_TRANSPORT = (
    "or call the app on the test's own loop with "
    "`httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` from an async test"
)
_PER_TASK_FIX = (
    "create the {noun} inside the coroutine and {release} before it returns{alternative}, or "
    "run the coroutines on one long-lived loop"
)

PATTERNS: dict[str, Cause] = {
    "test-client-request": Cause(
        "Starlette's TestClient, used without `with`, runs the application on a new event "
        "loop for every request, in a thread of its own (an anyio blocking portal), while the "
        "{noun} is created once, outside the app's lifespan (at import, in a cache or in a "
        "fixture): it stays bound to the loop it was first used on.",
        "use `with TestClient(app) as client:` (one loop for the whole block) and create the "
        "{noun} in the app's lifespan, ending it with {release}; "
        + _ASGI_TRANSPORT
        + "{alternative}.",
    ),
    "test-client": Cause(
        "Starlette's TestClient runs the application on an event loop of its own, in a thread "
        "of its own (an anyio blocking portal), a new one for each `with TestClient(app)` "
        "block, while the {noun} outlives the block: it is created outside the app's lifespan "
        "(at import, in a cache or in a fixture), so it stays bound to the loop it was first "
        "used on.",
        "create the {noun} in the app's lifespan and end the lifespan with {release}: it then "
        "lives and dies with each `with TestClient(app)` block; "
        + _ASGI_TRANSPORT
        + "{alternative}.",
    ),
    "async-to-sync": Cause(
        "asgiref's async_to_sync (Django's sync views, commands and tasks calling async code) "
        "runs each call on a new event loop, in a thread of its own, when no loop runs in the "
        "caller's thread, while the {noun} is created once (at import or in a cache): it stays "
        "bound to the loop of the call that first used it.",
        _PER_TASK_FIX + " (an ASGI server's) instead of one async_to_sync() loop per call.",
    ),
    "celery-task": Cause(
        "each Celery task runs its coroutine with asyncio.run(), on a new event loop, while "
        "the {noun} is created once per worker (at import or in a cache): it stays bound to "
        "the loop of the first task that used it.",
        _PER_TASK_FIX + " per worker process instead of asyncio.run() per task.",
    ),
    "closed-loop-anyio": Cause(
        "the {noun} outlived the event loop it was first used on: it is cached (a module-level "
        "object or an @lru_cache factory) while anyio's pytest plugin runs each test on a new "
        "loop (it keeps a loop only while an async fixture of a wider scope holds it).",
        "create the {noun} in an async fixture and {release} in its teardown: function-scoped "
        "for one per test, or session-scoped (with a session-scoped `anyio_backend` fixture) "
        "to keep anyio's loop, and the {noun}, for every test{alternative}.",
    ),
    "closed-loop-fixture": Cause(
        "the {noun} is created by {created_by} and shared by its tests, but each test "
        "runs on a new event loop: the {noun} stays bound to the loop of the first test that "
        "used it, which is closed now.",
        "give the fixture the tests' scope (a new {noun} per test, with {release} in its "
        "teardown), or run every test on the fixture's loop: an async fixture with "
        '{release} in its teardown and loop_scope="session" (pytest-asyncio: with '
        "asyncio_default_test_loop_scope = session; anyio: with a session-scoped "
        "`anyio_backend`){alternative}.",
    ),
    "idle-loop-fixture": Cause(
        "it belongs to a loop that is still open but not running: the {noun} is created by "
        "{created_by}, whose loop scope is wider than the test's (the test runs on a loop "
        "of its own).",
        _RUN_ON_FIXTURE_LOOP,
    ),
}
_UNKNOWN_FIXTURE = "a fixture"  # `loopguard report` reads no fixture


# resource (as records name it) -> its causes; integrations add theirs with ``register``.
_BY_RESOURCE: dict[str, dict[str, Cause]] = {
    "SQLAlchemy AsyncEngine": ENGINE,
    "SQLAlchemy connection": HELD_CONNECTION,
    # A pool made by create_async_pool_from_url(): no engine around it, its own dispose().
    "SQLAlchemy pool": {
        key: Cause(
            cause.text.replace("the engine", "the pool").replace("engine", "pool"),
            cause.fix.replace("await engine.dispose()", "pool.dispose()")
            .replace("`engine.sync_engine.dispose(close=False)`", "`pool.dispose()`")
            .replace("engine", "pool"),
        )
        for key, cause in ENGINE.items()
    },
    "asyncpg Pool": ASYNCPG_POOL,
    "asyncpg Connection": ASYNCPG_CONNECTION,
    "httpx AsyncClient": HTTPX_CLIENT,
    "aiohttp ClientSession": AIOHTTP_SESSION,
    "redis.asyncio client": REDIS_CLIENT,
    # A held connection of no known pool (connected before install()).
    "redis.asyncio connection": REDIS_CLIENT,
    "psycopg_pool AsyncConnectionPool": PSYCOPG_POOL,
    **{resource: primitive_causes(noun) for resource, noun in PRIMITIVE_NOUNS.items()},
}


def register(resource: str, causes: dict[str, Cause], terms: Optional[Terms] = None) -> None:
    """``causes``: the resource's own words (any key, a pattern's too); ``terms``: how the
    pattern causes it has no words for name it (default: its resource name, "close it")."""
    _BY_RESOURCE[resource] = causes
    if terms is not None:
        _TERMS[resource] = terms


def terms_for(resource: str) -> Terms:
    return _TERMS.get(resource) or Terms(resource, "close it")


def cause_for(resource: str, key: str, created_by: Optional[str] = None) -> Optional[Cause]:
    """The cause ``key`` worded for ``resource``: its own words, else the pattern's; None for
    a key this loopguard does not know.  ``created_by``: the record's fixture, if any."""
    cause = causes_for(resource).get(key) or PATTERNS.get(key)
    if cause is None:
        return None
    terms = terms_for(resource)
    values = {
        "{noun}": terms.noun,
        "{release}": terms.release,
        "{alternative}": terms.alternative,
        "{created_by}": f"the {created_by}" if created_by else _UNKNOWN_FIXTURE,
    }
    text, fix = cause
    for placeholder, value in values.items():
        text, fix = text.replace(placeholder, value), fix.replace(placeholder, value)
    return Cause(text, fix)


def causes_for(resource: str) -> dict[str, Cause]:
    """The causes for ``resource``; an unknown resource gets the standard ones for "object"."""
    causes = _BY_RESOURCE.get(resource)
    if causes is None:
        causes = _BY_RESOURCE[resource] = standard_causes("object", "release it")
    return causes
