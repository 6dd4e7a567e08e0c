"""LG101, a held connection in tests: a session-loop fixture yields its connection to tests
that run on their own loops."""

import os

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def conn():
    engine = create_async_engine(os.environ["DATABASE_URL"])
    async with engine.connect() as conn:  # checked out on the session's loop
        yield conn
    await engine.dispose()


@pytest.mark.asyncio
async def test_first(conn):
    assert await conn.scalar(text("select 1")) == 1


@pytest.mark.asyncio
async def test_second(conn):
    assert await conn.scalar(text("select 2")) == 2
