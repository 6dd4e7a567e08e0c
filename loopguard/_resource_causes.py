"""The likely causes of a loop mismatch and their fixes, in each guarded library's words.

One table per resource (an engine, a held connection, an asyncpg pool or connection, a
psycopg_pool pool, an httpx client, an aiohttp session, a redis client), keyed by
``_causes.likely_cause``; ``_causes`` maps each resource name to its table.
"""

from __future__ import annotations

from ._cause_wording import RUN_ON_FIXTURE_LOOP, Cause

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
        RUN_ON_FIXTURE_LOOP.format(noun="engine"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="connection or session"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="pool"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="connection"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="pool"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="client"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="session"),
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
        RUN_ON_FIXTURE_LOOP.format(noun="client"),
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
