"""LG111, fix: the lock is created inside each test's loop, by an async fixture."""

import asyncio

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def lock() -> asyncio.Lock:
    return asyncio.Lock()  # runs on the test's loop


async def refresh(lock: asyncio.Lock) -> str:
    async with lock:
        await asyncio.sleep(0.01)
        return "fresh"


@pytest.mark.asyncio
async def test_first(lock):
    assert await asyncio.gather(refresh(lock), refresh(lock)) == ["fresh", "fresh"]


@pytest.mark.asyncio
async def test_second(lock):
    assert await asyncio.gather(refresh(lock), refresh(lock)) == ["fresh", "fresh"]


@pytest.mark.asyncio
async def test_third(lock):
    assert await asyncio.gather(refresh(lock), refresh(lock)) == ["fresh", "fresh"]
