"""LG101, the bug: a cached engine shared by tests that each run on a new event loop."""

import os
from functools import lru_cache

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


@lru_cache
def get_engine() -> AsyncEngine:
    return create_async_engine(os.environ["DATABASE_URL"])


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
