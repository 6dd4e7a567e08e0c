"""LG101, the bug: a session-scoped fixture builds the engine, each test has its own loop."""

import os

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.fixture(scope="session")
def engine():
    return create_async_engine(os.environ["DATABASE_URL"])


@pytest.mark.asyncio
async def test_first(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


@pytest.mark.asyncio
async def test_second(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 2")) == 2
