"""LG101, fix: no pool in tests; every checkout opens a connection on the running loop."""

import os
from functools import lru_cache

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool


@lru_cache
def get_engine() -> AsyncEngine:
    return create_async_engine(os.environ["DATABASE_URL"], poolclass=NullPool)


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
