"""LG101, fix: the session's engine on the session's loop, and the tests on it too."""

import os

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine():
    engine = create_async_engine(os.environ["DATABASE_URL"])
    yield engine
    await engine.dispose()  # on the loop every test used


async def test_first(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


async def test_second(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 2")) == 2
