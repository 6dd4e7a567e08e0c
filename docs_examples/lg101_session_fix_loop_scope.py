"""LG101, fix: run the tests on the loop of the session-scoped engine fixture."""

import os

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine():
    engine = create_async_engine(os.environ["DATABASE_URL"])
    async with engine.begin() as conn:  # set-up work on the session's loop
        await conn.execute(text("select 1"))
    yield engine
    await engine.dispose()


async def test_first(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


async def test_second(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 2")) == 2
