"""LG101, fix: each job opens its own session and closes it before its loop ends."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


async def job(number: int) -> None:
    async with AsyncSession(engine) as session:  # closed (connection returned) at the end
        print(f"job {number}:", await session.scalar(text(f"select {number}")))
    await engine.dispose()  # the pool's connections belong to this job's loop: close them


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
