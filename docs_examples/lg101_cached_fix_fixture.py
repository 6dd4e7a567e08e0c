"""LG101, fix: one engine per test, created and disposed on the test's own loop."""

import os

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@pytest_asyncio.fixture
async def engine():
    engine = create_async_engine(os.environ["DATABASE_URL"])
    yield engine
    await engine.dispose()


@pytest.mark.asyncio
async def test_first(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


@pytest.mark.asyncio
async def test_second(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 2")) == 2


@pytest.mark.asyncio
async def test_third(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 3")) == 3
