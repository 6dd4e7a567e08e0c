"""LG112, fix: one asyncio.run() for all the jobs, so the shared pool stays on its loop."""

import asyncio
import os

from psycopg_pool import AsyncConnectionPool

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def job(pool: AsyncConnectionPool, number: int) -> None:
    async with pool.connection() as conn, pool.connection() as audit:
        cursor = await conn.execute("select %s::int", (number,))
        print(f"job {number}:", (await cursor.fetchone())[0])
        await audit.execute("select 'audit'")


async def main() -> None:
    async with AsyncConnectionPool(DSN, min_size=1, max_size=2, open=False) as pool:
        for number in (1, 2, 3):
            await job(pool, number)


if __name__ == "__main__":
    asyncio.run(main())
