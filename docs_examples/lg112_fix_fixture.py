"""LG112, fix in tests: the pool is opened and closed by an async fixture on the tests' loop."""

import os

import pytest
import pytest_asyncio
from psycopg_pool import AsyncConnectionPool

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


@pytest_asyncio.fixture  # the tests' loop scope (function): one pool per test
async def pool():
    async with AsyncConnectionPool(DSN, min_size=1, max_size=2, open=False) as pool:
        yield pool


@pytest.mark.asyncio
async def test_first(pool):
    async with pool.connection() as conn:
        assert await (await conn.execute("select 1")).fetchone() == (1,)


@pytest.mark.asyncio
async def test_second(pool):
    async with pool.connection() as conn, pool.connection() as audit:
        assert await (await conn.execute("select 2")).fetchone() == (2,)
        await audit.execute("select 'audit'")
