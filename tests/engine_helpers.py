"""Fixtures and checks shared by the tests of SQLAlchemy's other async drivers under the
SQLAlchemy guard (``test_psycopg.py``, ``test_mysql_drivers.py``; ``test_uvloop.py`` takes
``_uninstall``).  Those tests install loopguard themselves, in the mode each one needs.

Import the fixtures by name into a test module (``from engine_helpers import engines,
_uninstall``): ``_uninstall`` is autouse, so it then runs around every test of that module.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Iterator
from typing import Callable

import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

import loopguard


@pytest.fixture
def engines() -> Iterator[list[AsyncEngine]]:
    """Engines a test creates: disposed afterwards, on a live loop."""
    created: list[AsyncEngine] = []
    yield created
    loopguard.install("warn")  # dispose() below releases connections of dead loops quietly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", loopguard.LoopMismatchWarning)
        for engine in created:
            asyncio.run(engine.dispose())


@pytest.fixture(autouse=True)
def _uninstall() -> Iterator[None]:
    """Whatever the test installed is uninstalled after it."""
    yield
    if loopguard.is_installed():
        loopguard.uninstall()


def assert_silent_on_three_loops(
    engine: AsyncEngine,
    query: Callable[[AsyncEngine], Awaitable[int]],
    dispose_per_loop: bool,
) -> None:
    """Three ``asyncio.run()`` jobs on ``engine`` (disposing it at the end of each, or not):
    loopguard records nothing at all."""

    async def job() -> int:
        try:
            return await query(engine)
        finally:
            if dispose_per_loop:
                await engine.dispose()

    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            asyncio.run(job())
    assert logs == []
