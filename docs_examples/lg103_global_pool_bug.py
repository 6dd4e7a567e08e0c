"""LG103, the bug: a module-global asyncpg pool shared by several asyncio.run() jobs."""

import asyncio
import os

import asyncpg

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")

pool = None


async def job(number: int) -> None:
    global pool
    if pool is None:  # created on the first job's loop, kept for the next jobs
        pool = await asyncpg.create_pool(DSN, min_size=1, max_size=1)
    async with pool.acquire() as conn:
        print(f"job {number}:", await conn.fetchval(f"select {number}"))


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
