"""LG112, the bug: a module-global psycopg_pool pool shared by several asyncio.run() jobs."""

import asyncio
import os

from psycopg_pool import AsyncConnectionPool

# psycopg wants a plain postgresql:// URL, without SQLAlchemy's "+asyncpg".
DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")

pool = None


async def job(number: int) -> None:
    global pool
    if pool is None:  # opened on the first job's loop, kept for the next jobs
        pool = AsyncConnectionPool(DSN, min_size=1, max_size=2, timeout=3, open=False)
        await pool.open(wait=True)
    async with pool.connection() as conn:
        cursor = await conn.execute("select %s::int", (number,))
        print(f"job {number}:", (await cursor.fetchone())[0])
        if number > 1:  # later jobs also write an audit row, on a second connection
            async with pool.connection() as audit:
                await audit.execute("select 'audit'")


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
