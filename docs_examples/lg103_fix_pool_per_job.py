"""LG103, fix: each asyncio.run() job creates its own pool and closes it before returning."""

import asyncio
import os

import asyncpg

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def job(number: int) -> None:
    async with asyncpg.create_pool(DSN, min_size=1, max_size=1) as pool, pool.acquire() as conn:
        print(f"job {number}:", await conn.fetchval(f"select {number}"))


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
