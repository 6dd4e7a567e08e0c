"""LG111, the bug in a test suite: a module-level lock, and a new event loop per test."""

import asyncio

import pytest

lock = asyncio.Lock()  # created when pytest imports the module, with no loop running


async def refresh() -> str:
    async with lock:  # the second caller waits: asyncio binds the lock to this test's loop
        await asyncio.sleep(0.01)
        return "fresh"


@pytest.mark.asyncio
async def test_first():
    assert await asyncio.gather(refresh(), refresh()) == ["fresh", "fresh"]


@pytest.mark.asyncio
async def test_second():
    assert await asyncio.gather(refresh(), refresh()) == ["fresh", "fresh"]


@pytest.mark.asyncio
async def test_third():
    assert await asyncio.gather(refresh(), refresh()) == ["fresh", "fresh"]
