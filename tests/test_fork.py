"""A child forked while its parent's loop runs must not use the parent's pooled connections.

The child inherits the running loop (with this thread's ident, so the loop check's shortcut
would take it for the child's own loop), the pool and the sockets.  Each test runs a real
program in a subprocess against the real PostgreSQL: the parent opens a pooled connection,
forks from inside a coroutine, the child runs ``asyncio.run()`` on its own loop with the
parent's engine or pool, and then the parent uses its connection again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pgserver import sqlalchemy_url
from teststack import SQLALCHEMY, describe

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")

PROGRAM = textwrap.dedent(
    """\
    import asyncio, json, os, signal, sys, warnings
    import asyncpg
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    import loopguard

    MODE, KIND, CHILD = sys.argv[1], sys.argv[2], sys.argv[3]
    if MODE != "off":
        loopguard.install(MODE)
    warnings.simplefilter("always")
    engine = create_async_engine(os.environ["DATABASE_URL"])
    pool = None

    async def pid_via_engine():
        async with engine.connect() as conn:
            return (await conn.execute(text("select pg_backend_pid()"))).scalar()

    async def pid_via_pool():
        return await pool.fetchval("select pg_backend_pid()")

    async def child_job():
        if CHILD == "dispose":
            engine.sync_engine.dispose(close=False)
        return await (pid_via_engine() if KIND == "engine" else pid_via_pool())

    def on_hang(report):
        # Without loopguard the shared socket can leave either side waiting for ever:
        # report a hang as an outcome instead of letting the test's timeout kill it.
        def on_alarm(signum, frame):
            report()
            os._exit(0)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(30)

    def in_child(write_end):
        outcome = {}
        on_hang(lambda: os.write(write_end, json.dumps({"error": "hung", "warnings": []}).encode()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome["pid"] = asyncio.run(child_job())
            except BaseException as exc:
                outcome["error"] = f"{type(exc).__module__}.{type(exc).__name__}"
                outcome["cause"] = getattr(exc, "record", {}).get("cause")
                outcome["message"] = str(exc)
        outcome["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        os.write(write_end, json.dumps(outcome).encode())
        os._exit(0)

    async def main():
        global pool
        if KIND == "pool":
            dsn = os.environ["LOOPGUARD_TEST_DSN"]
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        before = await (pid_via_engine() if KIND == "engine" else pid_via_pool())
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:
            in_child(write_end)
        os.close(write_end)
        os.waitpid(child, 0)
        outcome = json.loads(os.read(read_end, 1 << 20).decode())
        report = {"child": outcome, "parent_before": before, "parent_after": "hung"}
        on_hang(lambda: print(json.dumps(report), flush=True))
        try:
            after = await asyncio.wait_for(
                pid_via_engine() if KIND == "engine" else pid_via_pool(), 10
            )
        except BaseException as exc:
            after = f"{type(exc).__name__}: {exc}"
        report["parent_after"] = after
        print(json.dumps(report), flush=True)
        if pool is not None:
            pool.terminate()  # its connection may be the one the child broke: no graceful close
        await engine.dispose()

    asyncio.run(main())
    """
)


def _run(tmp_path: Path, pg_dsn: str, mode: str, kind: str, child: str = "use") -> Any:
    script = tmp_path / "forking.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTEST_"))}
    env.update(DATABASE_URL=sqlalchemy_url(pg_dsn), LOOPGUARD_TEST_DSN=pg_dsn)
    result = subprocess.run(
        [sys.executable, str(script), mode, kind, child],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


@pytest.mark.parametrize("kind", ["engine", "pool"])
def test_without_loopguard_the_child_breaks_the_parents_connection(
    tmp_path: Path, pg_dsn: str, kind: str
) -> None:
    """The bug: the child does I/O on the parent's socket, and the parent's connection is
    lost, answers out of turn or never answers (CI's PostgreSQL 15 row once hung here)."""
    outcome = _run(tmp_path, pg_dsn, "off", kind)
    assert outcome["parent_after"] != outcome["parent_before"], outcome


@pytest.mark.parametrize("kind", ["engine", "pool"])
def test_raise_mode_stops_the_child_before_io_and_the_parent_carries_on(
    tmp_path: Path, pg_dsn: str, kind: str
) -> None:
    outcome = _run(tmp_path, pg_dsn, "raise", kind)
    child = outcome["child"]
    assert child["error"] == "loopguard.LoopMismatchError", outcome
    assert child["cause"] == "forked-child"
    assert "inherited through fork()" in child["message"]
    assert "forked from one whose event loop" in child["message"]
    assert outcome["parent_after"] == outcome["parent_before"], outcome


def test_warn_mode_heals_the_child_without_touching_the_parents_connection(
    tmp_path: Path, pg_dsn: str
) -> None:
    """warn: the child gets its own new connection; the parent's stays as it was."""
    outcome = _run(tmp_path, pg_dsn, "warn", "engine")
    child = outcome["child"]
    assert "error" not in child, outcome
    assert [w.split(":")[0] for w in child["warnings"]] == ["LoopMismatchWarning"]
    assert "forked from one whose event loop" in child["warnings"][0]
    assert child["pid"] != outcome["parent_before"]
    assert outcome["parent_after"] == outcome["parent_before"], outcome


@pytest.mark.skipif(
    SQLALCHEMY < (1, 4, 33),
    reason=f"dispose(close=False) is new in SQLAlchemy 1.4.33 ({describe('sqlalchemy')})",
)
@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_dispose_close_false_in_the_child_is_the_documented_fix(
    tmp_path: Path, pg_dsn: str, mode: str
) -> None:
    """SQLAlchemy's recipe for forks: engine.dispose(close=False) in the child; silent."""
    outcome = _run(tmp_path, pg_dsn, mode, "engine", child="dispose")
    child = outcome["child"]
    assert child.get("error") is None and child["warnings"] == [], outcome
    assert child["pid"] != outcome["parent_before"]
    assert outcome["parent_after"] == outcome["parent_before"], outcome
