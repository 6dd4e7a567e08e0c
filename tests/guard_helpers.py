"""Helpers shared by the guard tests (``test_sqlalchemy_guard.py``, ``test_asyncpg_guard.py``).

Plain functions; the fixtures they share (``mode``, ``_guard``, ``log_file``) are in
``conftest.py``.  Nothing here mocks asyncpg or the loop: each helper runs real loops against
the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import asyncpg
import pytest
import structlog

T = TypeVar("T")


def display_path(filename: str) -> str:
    """How loopguard prints a path with no pytest rootdir set: relative to the cwd."""
    try:
        return Path(filename).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return filename


def marker_line(filename: str, marker: str) -> int:
    """The line of ``filename`` that ends with the comment ``# <marker>``."""
    for number, line in enumerate(Path(filename).read_text().splitlines(), 1):
        if line.rstrip().endswith("# " + marker):
            return number
    raise AssertionError(f"marker {marker!r} not found in {filename}")


async def backend(dsn: str, pid: int) -> Optional[dict[str, Any]]:
    """What the server reports for backend ``pid`` (asked on a separate, raw asyncpg connection)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "select state, query, query_start, state_change, backend_start "
            "from pg_stat_activity where pid = $1",
            pid,
        )
    finally:
        await conn.close()
    return dict(row) if row is not None else None


def on_new_loop(make: Callable[[], Awaitable[T]]) -> tuple[T, Any]:
    """Run one job with asyncio.run(); return its result and the (now closed) loop."""
    seen: list[Any] = []

    async def main() -> T:
        seen.append(asyncio.get_running_loop())
        return await make()

    result = asyncio.run(main())
    return result, seen[0]


def current_test_id(request: pytest.FixtureRequest) -> str:
    """PYTEST_CURRENT_TEST as loopguard reads it while the test body runs."""
    return f"{request.node.nodeid} (call)"


@contextlib.contextmanager
def silence_checked(log_file: Path) -> Iterator[None]:
    """Assert the block raises nothing, warns nothing and logs nothing (structlog and file)."""
    with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert [entry for entry in logs if entry.get("event", "").startswith("loopguard.")] == []
    assert log_file.read_text() == ""
