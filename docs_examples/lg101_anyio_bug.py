"""LG101, the bug: a module-level engine, anyio's pytest plugin runs each test on a new loop."""

import os

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_first():
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 1")) == 1


@pytest.mark.anyio
async def test_second():
    async with engine.connect() as conn:
        assert await conn.scalar(text("select 2")) == 2
