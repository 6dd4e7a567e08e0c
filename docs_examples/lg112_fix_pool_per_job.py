"""LG112, fix: each asyncio.run() job opens its own pool and closes it before returning."""

import asyncio
import os

from psycopg_pool import AsyncConnectionPool

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def job(number: int) -> None:
    async with AsyncConnectionPool(DSN, min_size=1, max_size=2, open=False) as pool:
        async with pool.connection() as conn, pool.connection() as audit:
            cursor = await conn.execute("select %s::int", (number,))
            print(f"job {number}:", (await cursor.fetchone())[0])
            await audit.execute("select 'audit'")


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
