"""LG101, the bug: sync code calls async code through async_to_sync, a new loop per call."""

import os

from asgiref.sync import async_to_sync
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])  # one engine for the process


async def count_users() -> int:
    async with engine.connect() as conn:
        return await conn.scalar(text("select 1"))


def report(job: int) -> None:  # a sync Django view, command or task
    print(f"job {job}:", async_to_sync(count_users)())


if __name__ == "__main__":
    report(1)
    report(2)
