"""Three ordinary tests; pytest-asyncio runs each on a fresh event loop."""

from sqlalchemy import text
from src.configs.db import SessionLocal


async def test_create_user():
    async with SessionLocal() as session:
        assert (await session.execute(text("select 1"))).scalar() == 1


async def test_list_users():
    async with SessionLocal() as session:
        assert (await session.execute(text("select 2"))).scalar() == 2


async def test_delete_user():
    async with SessionLocal() as session:
        assert (await session.execute(text("select 3"))).scalar() == 3
