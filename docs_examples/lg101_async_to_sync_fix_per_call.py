"""LG101, fix: each async_to_sync call creates its engine and disposes it before returning."""

import os

from asgiref.sync import async_to_sync
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def count_users() -> int:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    try:
        async with engine.connect() as conn:
            return await conn.scalar(text("select 1"))
    finally:
        await engine.dispose()  # on this call's loop, before it ends


def report(job: int) -> None:
    print(f"job {job}:", async_to_sync(count_users)())


if __name__ == "__main__":
    report(1)
    report(2)
