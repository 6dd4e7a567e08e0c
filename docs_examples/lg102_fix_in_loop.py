"""LG102, fix: create the pool in the coroutine, on the loop that uses it."""

import asyncio
import os

import asyncpg

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def main() -> None:
    async with asyncpg.create_pool(DSN) as pool:  # created, used and closed on this loop
        print("result:", await pool.fetchval("select 1"))


if __name__ == "__main__":
    asyncio.run(main())
