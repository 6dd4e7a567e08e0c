"""LG102, fix: a program that runs its loop itself makes it the current loop first."""

import asyncio
import os

import asyncpg

DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def main(pool: asyncpg.Pool) -> None:
    print("result:", await pool.fetchval("select 1"))
    await pool.close()


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the loop create_pool() captures: the one that runs it
    try:
        pool = loop.run_until_complete(asyncpg.create_pool(DSN))  # no loop running yet
        loop.run_until_complete(main(pool))
    finally:
        loop.close()
