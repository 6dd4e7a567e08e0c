"""LG103, fix: one asyncio.run() for all the jobs, so the shared pool stays on its loop."""

import asyncio
import os

import asyncpg

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def job(pool: asyncpg.Pool, number: int) -> None:
    async with pool.acquire() as conn:
        print(f"job {number}:", await conn.fetchval(f"select {number}"))


async def main() -> None:
    async with asyncpg.create_pool(DSN, min_size=1, max_size=1) as pool:
        for number in (1, 2, 3):
            await job(pool, number)


if __name__ == "__main__":
    asyncio.run(main())
