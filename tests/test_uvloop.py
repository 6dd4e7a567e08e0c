"""Everything works the same when the loop is uvloop's (scenario 8)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_helpers import _uninstall
from pgserver import sqlalchemy_url
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import loopguard

__all__ = ["_uninstall"]  # an autouse fixture
uvloop = pytest.importorskip("uvloop")


@pytest.fixture
def engine(pg_dsn: str) -> Iterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(pg_dsn))
    yield engine
    # Release whatever a test left on a dead loop, then dispose on a live one.
    loopguard.install("warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", loopguard.LoopMismatchWarning)
        uvloop.run(engine.dispose())


async def _pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_raise_mode_on_uvloop(engine: AsyncEngine) -> None:
    """uvloop.run() per job: job 2 raises LoopMismatchError before any I/O, naming a closed loop."""
    loopguard.install("raise")
    with warnings.catch_warnings():
        # uvloop itself warns when a loop closes with the pool's transport open: the bug
        # loopguard is about to report; not what this test checks.
        warnings.simplefilter("ignore", ResourceWarning)
        uvloop.run(_pid(engine))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        uvloop.run(_pid(engine))
    assert excinfo.value.owner_loop_closed is True
    assert isinstance(excinfo.value, RuntimeError)
    assert "which is now closed" in str(excinfo.value)


def test_raise_mode_idle_uvloop_keeps_its_connection(engine: AsyncEngine) -> None:
    """An idle (open, not running) uvloop owner gets its untouched connection back."""
    loopguard.install("raise")
    owner = uvloop.new_event_loop()
    try:
        pid = owner.run_until_complete(_pid(engine))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            uvloop.run(_pid(engine))
        assert "still open but not running" in str(excinfo.value)
        assert owner.run_until_complete(_pid(engine)) == pid
        owner.run_until_complete(engine.dispose())
    finally:
        owner.close()


def test_warn_mode_on_uvloop_heals_without_leaks(engine: AsyncEngine) -> None:
    """warn mode over 10 uvloop.run() jobs: each switch warns once, a new backend serves it,
    no 'unclosed connection' ResourceWarning from asyncpg and no descriptor growth."""
    loopguard.install("warn")
    pids = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pids.append(uvloop.run(_pid(engine)))
        start = _fds()
        for _ in range(10):
            pids.append(uvloop.run(_pid(engine)))
            gc.collect()
        end = _fds()
    mismatches = [w for w in caught if issubclass(w.category, loopguard.LoopMismatchWarning)]
    assert len(mismatches) == 10
    assert len(set(pids)) == 11
    unclosed = [str(w.message) for w in caught if "unclosed connection" in str(w.message)]
    assert unclosed == []
    assert end <= start + 1


def _pytest_asyncio_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version("pytest-asyncio").split(".")[:2])


@pytest.mark.skipif(
    _pytest_asyncio_version() < (1, 4),
    reason="the pytest_asyncio_loop_factories hook is new in pytest-asyncio 1.4",
)
def test_pytest_asyncio_with_uvloop_loops(pytester: pytest.Pytester, pg_env: str) -> None:
    """Scenario 1 with pytest-asyncio's uvloop loop factory: the same LoopMismatchError."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function")
    pytester.makeconftest(
        """
        import uvloop

        def pytest_asyncio_loop_factories(config, item):
            return {"uvloop": uvloop.new_event_loop}
        """
    )
    pytester.makepyfile(
        f"""
        import asyncio
        from functools import lru_cache

        import uvloop
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        @lru_cache
        def get_engine():
            return create_async_engine({sqlalchemy_url(pg_env)!r})

        async def test_one():
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            async with get_engine().connect() as conn:
                await conn.execute(text("select 1"))

        async def test_two():
            async with get_engine().connect() as conn:
                await conn.execute(text("select 1"))
        """
    )
    result = pytester.runpytest_subprocess("--loopguard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*loopguard.LoopMismatchError: SQLAlchemy AsyncEngine used on event loop #*",
            "E*created at:    test_pytest_asyncio_with_uvloop_loops.py:* in get_engine *",
        ]
    )
    assert "attached to a different loop" not in result.stdout.str()


_DEFERRED_UVLOOP = """
import json, sys
import loopguard

loopguard.install("raise", log_file=sys.argv[2])
assert "uvloop" not in sys.modules, "install() imported uvloop"
import uvloop  # imported after install(): its loop's close() is wrapped now
assert getattr(uvloop.Loop.__dict__.get("close"), "__loopguard_wrapped__", False)

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
engine = create_async_engine(sys.argv[1])

async def connect():
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))

loop = uvloop.new_event_loop()
loop.run_until_complete(connect())
loop.close()  # the pool still holds this loop's connection: LG106
loopguard.uninstall()
assert "close" not in uvloop.Loop.__dict__, "uninstall() left uvloop.Loop.close"
with open(sys.argv[2]) as f:
    print(json.dumps([json.loads(line)["code"] for line in f]))
"""

_UNINSTALLED_BEFORE_UVLOOP = """
import sys
import loopguard
loopguard.install("raise")
loopguard.uninstall()
assert not [f for f in sys.meta_path if "loopguard" in type(f).__module__], sys.meta_path
import uvloop
assert "close" not in uvloop.Loop.__dict__, "wrapped after uninstall()"
print("ok")
"""


def _python(code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    # ResourceWarning stays a warning: uvloop's close() with a transport left open (the
    # leak LG106 reports) never returns when that warning is an error, loopguard or not.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-W", "ignore::ResourceWarning", "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_uvloop_imported_after_install_is_guarded_without_install_importing_it(
    pg_dsn: str, tmp_path: Path
) -> None:
    """install() does not import uvloop (~5 ms); uvloop's loops are guarded once it is."""
    log_file = tmp_path / "records.jsonl"
    output = _python(_DEFERRED_UVLOOP, sqlalchemy_url(pg_dsn), str(log_file))
    assert output == '["LG106"]'  # stdout is the script's alone: records go to stderr


def test_uvloop_imported_after_uninstall_is_left_alone() -> None:
    assert _python(_UNINSTALLED_BEFORE_UVLOOP) == "ok"
