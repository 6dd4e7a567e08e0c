"""LG101, fix: a session-scoped async fixture keeps anyio's loop, and the engine, for all."""

import os

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
async def engine(anyio_backend):
    engine = create_async_engine(os.environ["DATABASE_URL"])
    yield engine
    await engine.dispose()


@pytest.mark.anyio
async def test_first(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


@pytest.mark.anyio
async def test_second(engine):
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 2")) == 2
