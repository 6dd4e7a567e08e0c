"""LG101, fix: keep the cached engine, dispose it at the end of every test's loop."""

import os
from functools import lru_cache

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@lru_cache
def get_engine() -> AsyncEngine:
    return create_async_engine(os.environ["DATABASE_URL"])


@pytest_asyncio.fixture(autouse=True)
async def _dispose_engine():
    yield
    await get_engine().dispose()  # the next test's loop starts with an empty pool


@pytest.mark.asyncio
async def test_first():
    async with get_engine().connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


@pytest.mark.asyncio
async def test_second():
    async with get_engine().connect() as conn:
        assert await conn.scalar(text("select 2")) == 2


@pytest.mark.asyncio
async def test_third():
    async with get_engine().connect() as conn:
        assert await conn.scalar(text("select 3")) == 3
