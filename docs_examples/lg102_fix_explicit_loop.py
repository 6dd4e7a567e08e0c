"""LG102, fix: a program that runs its loop itself says which loop the pool is for."""

import asyncio
import os

import asyncpg

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")

loop = asyncio.new_event_loop()
pool = asyncpg.create_pool(DSN, loop=loop)  # created before the loop runs, for this loop


async def main() -> None:
    await pool
    print("result:", await pool.fetchval("select 1"))
    await pool.close()


if __name__ == "__main__":
    try:
        loop.run_until_complete(main())  # the pool's loop, and the only one
    finally:
        loop.close()
