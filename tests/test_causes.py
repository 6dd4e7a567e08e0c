"""The likely cause names the pattern behind a mismatch, for every guard (``_patterns``).

Real runs only: Starlette's TestClient (its anyio blocking portals, in threads of their own),
anyio's pytest plugin, asgiref's async_to_sync and a Celery worker thread (memory broker),
against the throwaway PostgreSQL.  The pytest suites are generated and run in a subprocess
(``pytester.runpytest_subprocess``, the plugin through its entry point); the in-process tests
install loopguard with the ``_guard`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import test_loop_scopes as scope_tests
import test_pytest_plugin as plugin_tests
from guard_helpers import display_path, marker_line
from pgserver import sqlalchemy_url
from test_pytest_plugin import RunPytest, assert_silent, ini, line_of, output, write
from teststack import PYTEST_ASYNCIO, describe

import loopguard
from loopguard import _release
from loopguard._patterns import refine
from loopguard._record import Record

_clean_environment = plugin_tests._clean_environment
db_url = plugin_tests.db_url
run = plugin_tests.run

needs_loop_scope = pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 24),
    reason=f"loop_scope= needs pytest-asyncio >= 0.24 ({describe('pytest-asyncio')})",
)
DIFFERENT_LOOP = "attached to a different loop"


# pytest-asyncio in strict mode (its default) leaves the anyio tests to anyio's plugin.
ANYIO_INI = "[pytest]\n" + (
    "asyncio_default_fixture_loop_scope = function\n" if PYTEST_ASYNCIO >= (0, 24) else ""
)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- Starlette's TestClient ------------------------------------------------------------------

APP_PY = """
    import os

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    engine = create_async_engine(os.environ["DATABASE_URL"])  # created at import


    async def one(request):
        async with engine.connect() as conn:
            return JSONResponse({"one": await conn.scalar(text("select 1"))})


    app = Starlette(routes=[Route("/", one)])
"""
USE_LINE = line_of(APP_PY, "async with engine.connect()")

PER_REQUEST_TESTS_PY = """
    from starlette.testclient import TestClient

    from app import app


    def test_two_requests():
        client = TestClient(app)
        assert client.get("/").json() == {"one": 1}  # request 1
        assert client.get("/").json() == {"one": 1}  # request 2
"""
REQUEST_1 = line_of(PER_REQUEST_TESTS_PY, "# request 1")
REQUEST_2 = line_of(PER_REQUEST_TESTS_PY, "# request 2")

TEST_CLIENT_FIX = (
    "use `with TestClient(app) as client:` (one loop for the whole block) and create the "
    "engine in the app's lifespan, ending it with `await engine.dispose()`; or call the app on "
    "the test's own loop with `httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` "
    "from an async test, or build it with `poolclass=NullPool`."
)


def test_test_client_without_with_gets_a_loop_per_request(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """TestClient used without ``with``: each request runs the app on a new loop, in a thread
    of its own.  Unguarded, the second request fails inside asyncpg; guarded, it is stopped,
    both loops are named as TestClient's (with the request's line and the thread), and the
    cause is TestClient's, not pytest-asyncio's."""
    write(
        pytester.path, {"pytest.ini": ini(), "app.py": APP_PY, "test_app.py": PER_REQUEST_TESTS_PY}
    )
    result = run("--tb=short")
    result.assert_outcomes(failed=1)
    assert DIFFERENT_LOOP in output(result)

    result = run("--loopguard", "--tb=short")
    result.assert_outcomes(failed=1)
    portal = "Starlette TestClient's loop for one request, at test_app.py:{} in test_two_requests"
    result.stdout.fnmatch_lines(
        [
            "E   loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #2, but "
            "its pooled connections belong to loop #1; stopped before any I/O.",
            f"E     bound:         first connection opened during test_app.py::test_two_requests "
            f"(call), at app.py:{USE_LINE} in one, on loop #1 ({portal.format(REQUEST_1)}, in "
            "thread *), which is now closed",
            "E     used now:      during test_app.py::test_two_requests (call) on loop #2 "
            f"({portal.format(REQUEST_2)}, in thread *), at app.py:{USE_LINE} in one",
            "E     likely cause:  Starlette's TestClient, used without `with`, runs the "
            "application on a new event loop for every request, in a thread of its own (an "
            "anyio blocking portal), while the engine is created once, outside the app's "
            "lifespan (at import, in a cache or in a fixture): it stays bound to the loop it was "
            "first used on.",
            f"E     fix:           {TEST_CLIENT_FIX}",
        ]
    )
    assert DIFFERENT_LOOP not in output(result)


WITH_BLOCK_TESTS_PY = """
    from starlette.testclient import TestClient

    from app import app


    def test_first():
        with TestClient(app) as client:  # block 1
            assert client.get("/").json() == {"one": 1}


    def test_second():
        with TestClient(app) as client:  # block 2
            assert client.get("/").json() == {"one": 1}
"""


def test_test_client_with_blocks_each_get_a_loop(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """Each ``with TestClient(app)`` block runs the app on a loop of its own: an engine
    created at import is bound to the first block's loop, and the second block is stopped with
    TestClient's cause and the lifespan fix; the record says ``test-client``."""
    write(
        pytester.path, {"pytest.ini": ini(), "app.py": APP_PY, "test_app.py": WITH_BLOCK_TESTS_PY}
    )
    log = pytester.path / "lg.jsonl"
    result = run("--loopguard", "--tb=short", env={"LOOPGUARD_LOG_FILE": str(log)})
    result.assert_outcomes(passed=1, failed=1)
    block = "Starlette TestClient's loop for the `with` block at test_app.py:{} in {}, in thread *"
    result.stdout.fnmatch_lines(
        [
            "E     bound:         first connection opened during test_app.py::test_first (call), "
            f"at app.py:{USE_LINE} in one, on loop #1 "
            f"({block.format(line_of(WITH_BLOCK_TESTS_PY, '# block 1'), 'test_first')}), which "
            "is now closed",
            "E     used now:      during test_app.py::test_second (call) on loop #2 "
            f"({block.format(line_of(WITH_BLOCK_TESTS_PY, '# block 2'), 'test_second')}), at "
            f"app.py:{USE_LINE} in one",
            "E     likely cause:  Starlette's TestClient runs the application on an event loop of "
            "its own, in a thread of its own (an anyio blocking portal), a new one for each "
            "`with TestClient(app)` block, while the engine outlives the block: it is created "
            "outside the app's lifespan (at import, in a cache or in a fixture), so it stays "
            "bound to the loop it was first used on.",
            "E     fix:           create the engine in the app's lifespan and end the lifespan "
            "with `await engine.dispose()`: it then lives and dies with each `with "
            "TestClient(app)` block; or call the app on the test's own loop with "
            "`httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` from an async test, or "
            "build it with `poolclass=NullPool`.",
        ]
    )
    causes = [(r["code"], r.get("cause")) for r in records(log)]
    assert ("LG101", "test-client") in causes


LIFESPAN_APP_PY = """
    import contextlib
    import os

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route


    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.engine = create_async_engine(os.environ["DATABASE_URL"])
        yield
        await app.state.engine.dispose()


    async def one(request):
        async with request.app.state.engine.connect() as conn:
            return JSONResponse({"one": await conn.scalar(text("select 1"))})


    app = Starlette(routes=[Route("/", one)], lifespan=lifespan)
"""


def test_test_client_with_a_lifespan_that_disposes_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The fix: ``with TestClient(app)`` and the engine made and disposed in the lifespan, in
    two tests (two blocks, two loops) with two requests each: every warning an error, and
    loopguard says nothing."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "app.py": LIFESPAN_APP_PY,
            "test_app.py": WITH_BLOCK_TESTS_PY.replace(
                'assert client.get("/").json() == {"one": 1}',
                'assert client.get("/").json() == client.get("/").json() == {"one": 1}',
            ),
        },
    )
    result = run("--loopguard", "-W", "error")
    result.assert_outcomes(passed=2)
    assert_silent(result)


@pytest.mark.usefixtures("_guard")
def test_every_guard_gets_test_clients_cause(pg_dsn: str) -> None:
    """Not only engines: a raw asyncpg pool (LG103) and an object registered with
    loopguard.track() (LG107) used across TestClient's per-request loops get the same cause."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    pools: list[Any] = []
    tracked = loopguard.track(contextlib.ExitStack(), name="a client of the app's")

    async def pool_endpoint(request: Any) -> JSONResponse:
        if not pools:  # a pool cached by the app on its first request
            pools.append(await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1))
        return JSONResponse({"one": await pools[0].fetchval("select 1")})

    async def tracked_endpoint(request: Any) -> JSONResponse:
        loopguard.check(tracked)
        return JSONResponse({"one": 1})

    app = Starlette(routes=[Route("/pool", pool_endpoint), Route("/tracked", tracked_endpoint)])
    client = TestClient(app)
    for path, code in (("/pool", "LG103"), ("/tracked", "LG107")):
        assert client.get(path).json() == {"one": 1}
        with pytest.raises(loopguard.LoopMismatchError) as caught:
            client.get(path)
        assert (caught.value.code, caught.value.record["cause"]) == (code, "test-client-request")
        assert "likely cause:  Starlette's TestClient, used without `with`" in str(caught.value)
    for holder in pools[0]._holders:  # their loop is closed: their sockets are closed directly
        if holder._con is not None:
            _release.close_without_loop(holder._con)


# -- anyio's pytest plugin ---------------------------------------------------------------------

ANYIO_TESTS_PY = """
    import os

    import pytest
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(os.environ["DATABASE_URL"])


    @pytest.fixture
    def anyio_backend():
        return "asyncio"


    @pytest.mark.anyio
    async def test_first():
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 1")) == 1


    @pytest.mark.anyio
    async def test_second():
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 2")) == 2
"""


def test_anyio_plugin_loops_are_named_and_its_pattern_given(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """``@pytest.mark.anyio`` tests run each on a loop of anyio's: unguarded the second test
    fails inside asyncpg; guarded, the loops are named after the tests that hold them, the
    tests are attributed, and the cause speaks of anyio's plugin, not of pytest-asyncio."""
    write(pytester.path, {"pytest.ini": ANYIO_INI, "test_anyio.py": ANYIO_TESTS_PY})
    result = run("--tb=short")
    result.assert_outcomes(passed=1, failed=1)
    assert DIFFERENT_LOOP in output(result)

    result = run("--loopguard", "--tb=short")
    result.assert_outcomes(passed=1, failed=1)
    use = line_of(ANYIO_TESTS_PY, 'select 2"')
    result.stdout.fnmatch_lines(
        [
            "E     bound:         first connection opened during test_anyio.py::test_first "
            "(call), at test_anyio.py:* in test_first, on loop #1 (anyio's loop for "
            "test_anyio.py::test_first), which is now closed",
            "E     used now:      during test_anyio.py::test_second (call) on loop #2 (anyio's "
            f"loop for test_anyio.py::test_second), at test_anyio.py:{use - 1} in test_second",
            "E     likely cause:  the engine outlived the event loop it was first used on: it is "
            "cached (a module-level object or an @lru_cache factory) while anyio's pytest plugin "
            "runs each test on a new loop (it keeps a loop only while an async fixture of a "
            "wider scope holds it).",
            "E     fix:           create the engine in an async fixture and `await "
            "engine.dispose()` in its teardown: function-scoped for one per test, or "
            "session-scoped (with a session-scoped `anyio_backend` fixture) to keep anyio's "
            "loop, and the engine, for every test, or build it with `poolclass=NullPool`.",
        ]
    )
    assert "pytest-asyncio" not in output(result)


ANYIO_SESSION_TESTS_PY = """
    import asyncio
    import os

    import pytest
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from loopguard._loops import loop_id, loop_name


    @pytest.fixture(scope="session")
    def anyio_backend():
        return "asyncio"


    @pytest.fixture(scope="session")
    async def engine(anyio_backend):
        engine = create_async_engine(os.environ["DATABASE_URL"])
        yield engine
        await engine.dispose()


    @pytest.mark.anyio
    async def test_first(engine):
        print(f"loop:[{loop_name(loop_id(asyncio.get_running_loop()))}]")
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 1")) == 1


    @pytest.mark.anyio
    async def test_second(engine):
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 2")) == 2
"""


def test_anyio_session_fixture_keeps_one_loop_and_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The fix: an async session-scoped fixture holds anyio's loop for every test; the loop
    is named after that fixture, and loopguard says nothing (every warning an error)."""
    write(pytester.path, {"pytest.ini": ANYIO_INI, "test_anyio.py": ANYIO_SESSION_TESTS_PY})
    result = run("--loopguard", "-W", "error", "-s")
    result.assert_outcomes(passed=2)
    fixture_line = line_of(ANYIO_SESSION_TESTS_PY, "async def engine(") - 1
    result.stdout.fnmatch_lines(
        [
            "*loop:[[] (anyio's loop for the session-scoped fixture 'engine' at "
            f"test_anyio.py:{fixture_line})]"
        ]
    )
    assert_silent(result)


# -- objects created by a fixture of a wider scope -------------------------------------------

SYNC_FIXTURE_CONFTEST_PY = """
    import os

    import pytest
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest.fixture(scope="session")
    def engine():
        return create_async_engine(os.environ["DATABASE_URL"])
"""
FIXTURE_TESTS_PY = """
    from sqlalchemy import text


    async def test_first(engine):
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 1")) == 1


    async def test_second(engine):
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 2")) == 2
"""


def test_engine_of_a_session_scoped_sync_fixture_is_described_as_that_fixture(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """A sync session-scoped fixture builds the engine, each test runs on its own loop: the
    cause names the fixture and its line (not "cached ... @lru_cache"), and the record carries
    it as ``created_by``."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": SYNC_FIXTURE_CONFTEST_PY,
            "test_db.py": FIXTURE_TESTS_PY,
        },
    )
    log = pytester.path / "lg.jsonl"
    result = run("--loopguard", "--tb=short", env={"LOOPGUARD_LOG_FILE": str(log)})
    result.assert_outcomes(passed=1, failed=1)
    line = line_of(SYNC_FIXTURE_CONFTEST_PY, "@pytest.fixture")
    fixture = f"session-scoped fixture 'engine' at conftest.py:{line}"
    result.stdout.fnmatch_lines(
        [
            f"E     likely cause:  the engine is created by the {fixture} and shared by its tests, "
            "but each test runs on a new event loop: the engine stays bound to the loop of the "
            "first test that used it, which is closed now.",
            "E     fix:           give the fixture the tests' scope (a new engine per test, with "
            "`await engine.dispose()` in its teardown), or run every test on the fixture's "
            "loop: an async fixture with `await engine.dispose()` in its teardown and "
            'loop_scope="session" (pytest-asyncio: with asyncio_default_test_loop_scope = '
            "session; anyio: with a session-scoped `anyio_backend`), or build it with "
            "`poolclass=NullPool`.",
        ]
    )
    assert "@lru_cache" not in output(result)
    [record] = [r for r in records(log) if r["code"] == "LG101"]
    assert (record["cause"], record["created_by"]) == ("closed-loop-fixture", fixture)


NESTED_FIXTURE_CONFTEST_PY = """
    import os

    import pytest
    from sqlalchemy.ext.asyncio import create_async_engine


    @pytest.fixture(scope="session")
    def database_url():
        return os.environ["DATABASE_URL"]


    @pytest.fixture(scope="session")
    def engine(request):
        url = request.getfixturevalue("database_url")  # set up inside engine's own setup
        return create_async_engine(url)
"""


def test_an_engine_made_after_a_nested_fixture_setup_is_described_as_its_own_fixture(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The fixture ``engine`` asks for ``database_url`` while it is being set up, then creates
    the engine: ``created_by`` names ``engine`` (the fixture still being set up), not the
    nested fixture whose setup ended before the engine was created."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": NESTED_FIXTURE_CONFTEST_PY,
            "test_db.py": FIXTURE_TESTS_PY,
        },
    )
    log = pytester.path / "lg.jsonl"
    result = run("--loopguard", "--tb=short", env={"LOOPGUARD_LOG_FILE": str(log)})
    result.assert_outcomes(passed=1, failed=1)
    line = line_of(NESTED_FIXTURE_CONFTEST_PY, "def engine(request)") - 1
    fixture = f"session-scoped fixture 'engine' at conftest.py:{line}"
    [record] = [r for r in records(log) if r["code"] == "LG101"]
    assert (record["cause"], record["created_by"]) == ("closed-loop-fixture", fixture)


BODY_FIXTURE_CONFTEST_PY = """
    import pytest

    import loopguard

    made = {}


    class Thing:
        pass


    @pytest.fixture
    def late():
        made["late"] = loopguard.track(Thing(), name="late")
        yield


    @pytest.fixture
    def maker():
        yield
        made["teardown"] = loopguard.track(Thing(), name="teardown")
"""
BODY_FIXTURE_TESTS_PY = """
    import asyncio

    import pytest

    import loopguard
    from conftest import made


    def test_body_requests_a_fixture(maker, request):
        request.getfixturevalue("late")


    def test_each_on_two_loops():
        async def check(obj):
            loopguard.check(obj)

        for name in ("late", "teardown"):
            asyncio.run(check(made[name]))
            with pytest.raises(loopguard.LoopMismatchError):
                asyncio.run(check(made[name]))
"""


def test_a_fixture_requested_in_the_test_body_creates_until_its_teardown_only(
    pytester: pytest.Pytester, run: RunPytest
) -> None:
    """A fixture set up from the test body (``getfixturevalue``) is the creator of what is made
    during its setup; once torn down it is nobody's creator: an object made afterwards, in
    the teardown of a fixture torn down after it, was created by no fixture."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": BODY_FIXTURE_CONFTEST_PY,
            "test_body.py": BODY_FIXTURE_TESTS_PY,
        },
    )
    log = pytester.path / "lg.jsonl"
    result = run("--loopguard", env={"LOOPGUARD_LOG_FILE": str(log)})
    result.assert_outcomes(passed=2)
    line = line_of(BODY_FIXTURE_CONFTEST_PY, "def late()") - 1
    created_by = {r["name"]: r.get("created_by") for r in records(log) if r["code"] == "LG107"}
    assert created_by == {
        "late": f"function-scoped fixture 'late' at conftest.py:{line}",
        "teardown": None,
    }


HTTPX_FIXTURE_CONFTEST_PY = """
    import os

    import httpx
    import pytest


    @pytest.fixture(scope="session")
    def client():
        return httpx.AsyncClient(base_url=os.environ["HTTP_URL"])
"""
HTTPX_FIXTURE_TESTS_PY = """
    async def test_first(client):
        assert (await client.get("/")).status_code == 200


    async def test_second(client):
        assert (await client.get("/")).status_code == 200
"""


def test_http_client_of_a_session_scoped_fixture_is_described_as_that_fixture(
    pytester: pytest.Pytester, http_env: str, run: RunPytest
) -> None:
    """Not only engines: an httpx client built by a sync session-scoped fixture gets the
    fixture's cause in the client's words (LG108), ``created_by`` in its record."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "conftest.py": HTTPX_FIXTURE_CONFTEST_PY,
            "test_http.py": HTTPX_FIXTURE_TESTS_PY,
        },
    )
    log = pytester.path / "lg.jsonl"
    result = run("--loopguard", "--tb=short", env={"LOOPGUARD_LOG_FILE": str(log)})
    result.assert_outcomes(passed=1, failed=1)
    line = line_of(HTTPX_FIXTURE_CONFTEST_PY, "@pytest.fixture")
    fixture = f"session-scoped fixture 'client' at conftest.py:{line}"
    result.stdout.fnmatch_lines(
        [
            f"E     likely cause:  the client is created by the {fixture} and shared by its tests, "
            "but each test runs on a new event loop: the client stays bound to the loop of the "
            "first test that used it, which is closed now.",
            "E     fix:           give the fixture the tests' scope (a new client per test, with "
            "`await client.aclose()` in its teardown), or run every test on the fixture's "
            "loop: an async fixture with `await client.aclose()` in its teardown and "
            'loop_scope="session" (pytest-asyncio: with asyncio_default_test_loop_scope = '
            "session; anyio: with a session-scoped `anyio_backend`).",
        ]
    )
    [record] = [r for r in records(log) if r["code"] == "LG108"]
    assert (record["cause"], record["created_by"]) == ("closed-loop-fixture", fixture)


@needs_loop_scope
def test_engine_of_a_session_loop_fixture_is_described_as_that_fixture(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """An async fixture on the session's loop (scenario 2): the cause names the fixture."""
    scope_tests.engine_suite(pytester.path)
    result = run("--loopguard", "--tb=short")
    result.assert_outcomes(failed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "E     likely cause:  it belongs to a loop that is still open but not running: the "
            "engine is created by the session-scoped fixture 'engine' at "
            f"conftest.py:{scope_tests.ENGINE_LINE}, whose loop scope is wider than the test's "
            "(the test runs on a loop of its own).",
        ]
    )


# -- a loop per task ---------------------------------------------------------------------------


@pytest.fixture
def engine_url(pg_dsn: str) -> str:
    return sqlalchemy_url(pg_dsn)


@pytest.mark.usefixtures("_guard")
def test_async_to_sync_names_the_loop_per_call(engine_url: str) -> None:
    """asgiref's async_to_sync starts a loop per call (in a thread of its own) when none runs
    in the caller's: the second call is stopped, and the cause names async_to_sync."""
    from asgiref.sync import async_to_sync
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(engine_url)

    async def select_one() -> Any:
        async with engine.connect() as conn:
            return await conn.scalar(text("select 1"))

    try:
        assert async_to_sync(select_one)() == 1
        with pytest.raises(loopguard.LoopMismatchError) as caught:
            async_to_sync(select_one)()
    finally:
        asyncio.run(engine.dispose())  # its connections are of closed loops: closed directly
    assert caught.value.record["cause"] == "async-to-sync"
    lines = str(caught.value).splitlines()
    assert lines[5:7] == [
        "  likely cause:  asgiref's async_to_sync (Django's sync views, commands and tasks calling "
        "async code) runs each call on a new event loop, in a thread of its own, when no loop "
        "runs in the caller's thread, while the engine is created once (at import or in a "
        "cache): it stays bound to the loop of the call that first used it.",
        "  fix:           create the engine inside the coroutine and `await engine.dispose()` "
        "before it returns, or build it with `poolclass=NullPool`, or run the coroutines on one "
        "long-lived loop (an ASGI server's) instead of one async_to_sync() loop per call.",
    ]


@pytest.mark.usefixtures("_guard")
def test_async_to_sync_cause_for_a_tracked_object() -> None:
    """loopguard.track() objects (LG107) get the same cause, worded with their resource."""
    from asgiref.sync import async_to_sync

    tracked = loopguard.track(contextlib.ExitStack())

    async def use() -> None:
        loopguard.check(tracked)

    async_to_sync(use)()
    with pytest.raises(loopguard.LoopMismatchError) as caught:
        async_to_sync(use)()
    assert (caught.value.code, caught.value.record["cause"]) == ("LG107", "async-to-sync")
    assert "while the contextlib.ExitStack is created once" in str(caught.value)


@pytest.fixture
def celery_worker_app(engine_url: str) -> Iterator[Any]:
    """A Celery app with a real worker in a thread of this process (memory broker, solo
    pool): its task runs a coroutine with asyncio.run() on an engine made once."""
    from celery import Celery
    from celery.contrib.testing.worker import start_worker
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    app = Celery("jobs", broker="memory://", backend="cache+memory://")
    engine = create_async_engine(engine_url)

    async def select_one() -> Any:
        async with engine.connect() as conn:
            return await conn.scalar(text("select 1"))

    def select_one_job() -> Any:
        return asyncio.run(select_one())

    select_one_task = app.task(name="jobs.select_one")(select_one_job)  # celery is untyped
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="ERROR"):
        yield select_one_task
    asyncio.run(engine.dispose())  # its connections are of closed loops: closed directly


def test_celery_task_names_the_loop_per_task(log_file: Path, celery_worker_app: Any) -> None:
    """A Celery worker runs each task's asyncio.run() on a new loop: the second task is
    stopped in the worker thread, and its record's cause is ``celery-task``."""
    assert celery_worker_app.delay().get(timeout=30) == 1
    with pytest.raises(Exception, match="LoopMismatchError"):
        celery_worker_app.delay().get(timeout=30)
    [record] = [r for r in records(log_file) if r["event"] == "loopguard.loop_mismatch"]
    assert (record["code"], record["cause"]) == ("LG101", "celery-task")


@pytest.mark.parametrize("mode", ["raise", "warn"])
@pytest.mark.usefixtures("_guard")
def test_patterns_are_looked_for_only_when_a_mismatch_is_reported(
    engine_url: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not on a guarded call: 100 checkouts and statements on the engine's own loop make no
    refine() call; the mismatch that follows makes one."""
    import warnings

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    calls: list[str] = []

    def counting(record: Record) -> Record:
        calls.append(record.code)
        return refine(record)

    monkeypatch.setattr("loopguard._emit.refine", counting)
    engine = create_async_engine(engine_url)

    async def statements() -> None:
        for _ in range(100):
            async with engine.connect() as conn:
                assert await conn.scalar(text("select 1")) == 1

    asyncio.run(statements())
    assert calls == []
    with warnings.catch_warnings(record=True), contextlib.suppress(loopguard.LoopMismatchError):
        warnings.simplefilter("always")
        asyncio.run(statements())
    assert calls == ["LG101"]
    asyncio.run(engine.dispose())  # the connections of closed loops: closed directly


# -- the patterns that are not refined -------------------------------------------------------


def test_a_fork_or_a_pool_created_outside_a_loop_keeps_its_cause() -> None:
    """Only the causes a pattern can explain better are refined."""
    for cause in ("forked-child", "outside-loop", None):
        record = Record(code="LG101", action="raised", resource="x", cause=cause)
        assert refine(record) is record
    plain = Record(code="LG101", action="raised", resource="x", cause="closed-loop-run")
    assert refine(plain).cause == "closed-loop-run"  # nothing recognised: unchanged


# -- a session-scoped loop for everything ------------------------------------------------------

SESSION_LOOP_CONFTEST_PY = """
    import pytest_asyncio

    from app import engine


    @pytest_asyncio.fixture(scope="session", autouse=True)
    async def _dispose_engine():
        yield
        await engine.dispose()
"""
ASGI_TESTS_PY = """
    import httpx

    from app import app


    async def test_first():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).json() == {"one": 1}


    async def test_second():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).json() == {"one": 1}
"""


@pytest.mark.skipif(
    PYTEST_ASYNCIO < (0, 26), reason="asyncio_default_test_loop_scope needs pytest-asyncio 0.26"
)
def test_one_session_loop_for_everything_is_silent(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """The app driven on the tests' own loop (httpx's ASGITransport), every test and fixture
    on the session's loop, the module-level engine disposed on it at the end: silent."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(
                "asyncio_default_test_loop_scope = session", fixture_loop_scope="session"
            ),
            "app.py": APP_PY,
            "conftest.py": SESSION_LOOP_CONFTEST_PY,
            "test_app.py": ASGI_TESTS_PY,
        },
    )
    result = run("--loopguard", "-W", "error")
    result.assert_outcomes(passed=2)
    assert_silent(result)


# -- pytest-asyncio's own loop-scope warning ---------------------------------------------------

# pytest-asyncio's PytestAsyncioLoopScopeMismatchWarning is planned for its 2.0 line (pull
# request #1516) and in no release on PyPI: this plugin stands in for it, as that branch does
# it (the class exported by pytest_asyncio, emitted from a tryfirst pytest_pyfunc_call
# wrapper for each async fixture whose loop scope differs from the test's, with its message).
ASYNCIO_V2_WARNING_PY = '''
    """pytest-asyncio 2.0's PytestAsyncioLoopScopeMismatchWarning, as its pull request #1516."""

    import inspect
    import warnings

    import pytest
    import pytest_asyncio


    class PytestAsyncioLoopScopeMismatchWarning(pytest.PytestWarning):
        pass


    pytest_asyncio.PytestAsyncioLoopScopeMismatchWarning = PytestAsyncioLoopScopeMismatchWarning


    def _loop_scope(fixturedef):
        func = inspect.unwrap(fixturedef.func)
        if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
            return None
        return getattr(fixturedef.func, "_loop_scope", None) or fixturedef.scope


    @pytest.hookimpl(tryfirst=True, hookwrapper=True)
    def pytest_pyfunc_call(pyfuncitem):
        marker = pyfuncitem.get_closest_marker("asyncio")
        test_scope = (marker.kwargs.get("loop_scope") if marker else None) or "function"
        for name, fixturedefs in pyfuncitem._fixtureinfo.name2fixturedefs.items():
            fixture_scope = _loop_scope(fixturedefs[-1])
            if fixture_scope is not None and fixture_scope != test_scope:
                warnings.warn(
                    PytestAsyncioLoopScopeMismatchWarning(
                        f"{pyfuncitem.nodeid}: the test's effective loop_scope {test_scope!r} "
                        f"differs from fixture {name!r}'s effective loop_scope "
                        f"{fixture_scope!r}. The fixture will run on a different event loop "
                        "than the test, which can silently break objects (e.g. asyncio.Future, "
                        "Task, or Lock) bound to the loop they were created on."
                    ),
                    stacklevel=1,
                )
        yield
'''
DEDUP_CONFTEST_PY = (
    scope_tests.ENGINE_CONFTEST_PY
    + """

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def settings():
        yield {"debug": True}
"""
)
DEDUP_TESTS_PY = """
    from sqlalchemy import text


    async def test_one(engine, settings):
        async with engine.connect() as conn:
            assert await conn.scalar(text("select 1")) == 1
"""


def _asyncio_warnings(result: pytest.RunResult) -> list[str]:
    return re.findall(r"PytestAsyncioLoopScopeMismatchWarning: .*?fixture '(\w+)'", output(result))


@needs_loop_scope
def test_pytest_asyncio_warning_is_not_given_again_for_a_fixture_lg105_reports(
    pytester: pytest.Pytester, db_url: str, run: RunPytest
) -> None:
    """With pytest-asyncio's own warning present, the engine fixture is reported once, by
    LG105 (which says what it yields and what happens); pytest-asyncio's warning stays for the
    fixture that yields nothing loop-bound, and for both without loopguard."""
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "asyncio_v2_warning.py": ASYNCIO_V2_WARNING_PY,
            "conftest.py": DEDUP_CONFTEST_PY,
            "test_db.py": DEDUP_TESTS_PY,
        },
    )
    result = run("-p", "asyncio_v2_warning", "--tb=no")
    assert sorted(_asyncio_warnings(result)) == ["engine", "settings"]

    result = run("-p", "asyncio_v2_warning", "--loopguard", "--tb=no")
    result.assert_outcomes(failed=1, warnings=2)
    assert _asyncio_warnings(result) == ["settings"]
    assert output(result).count("LoopScopeMismatchWarning: fixture 'engine' yields") == 1


# -- the patches that name anyio's loops -------------------------------------------------------


def test_anyio_patches_go_on_with_install_and_come_off_exactly() -> None:
    """start_blocking_portal and anyio's TestRunner.__enter__ are wrapped while installed and
    hold their very objects again after uninstall() (anyio 3 inherits __enter__ from its
    abstract TestRunner: absent from the class again afterwards)."""
    import anyio._backends._asyncio as anyio_asyncio
    import anyio.from_thread

    slots = (
        (anyio.from_thread, "start_blocking_portal"),
        (anyio_asyncio.TestRunner, "__enter__"),
    )
    before = [owner.__dict__.get(name) for owner, name in slots]
    loopguard.install()
    try:
        during = [owner.__dict__.get(name) for owner, name in slots]
    finally:
        loopguard.uninstall()
    after = [owner.__dict__.get(name) for owner, name in slots]
    assert all(d is not None and d is not b for d, b in zip(during, before))
    assert all(a is b for a, b in zip(after, before))


def test_loopguard_never_imports_anyio_itself() -> None:
    """A program that never imports anyio does not get it from loopguard: the patches wait
    for anyio's own import."""
    import subprocess
    import sys

    code = (
        "import sys, loopguard; loopguard.install(); import sqlalchemy.ext.asyncio; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('anyio', 'starlette')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.usefixtures("_guard")
def test_any_blocking_portal_loop_is_named_with_its_line_and_thread() -> None:
    """A portal started by other code than TestClient: named as anyio's, where it started."""
    import anyio.from_thread

    from loopguard._loops import loop_id, loop_name

    with anyio.from_thread.start_blocking_portal() as portal:  # started here
        loop = portal.call(asyncio.get_running_loop)
        thread = portal.call(lambda: threading.current_thread().name)
        name = loop_name(loop_id(loop))
    line = marker_line(__file__, "started here")
    assert name == (
        f" (an anyio blocking portal's loop, started at {display_path(__file__)}:{line} in "
        f"test_any_blocking_portal_loop_is_named_with_its_line_and_thread, in thread {thread})"
    )
