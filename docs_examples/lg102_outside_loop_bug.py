"""LG102, the bug: asyncpg.create_pool() at import time, before any event loop runs."""

import asyncio
import os

import asyncpg

# asyncpg wants a plain postgresql:// DSN, without SQLAlchemy's "+asyncpg".
DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")

pool = asyncpg.create_pool(DSN)  # no loop running: the pool takes asyncio.get_event_loop()'s


async def main() -> None:
    await pool  # asyncio.run() runs main() on a new loop, not the pool's
    print("result:", await pool.fetchval("select 1"))
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
