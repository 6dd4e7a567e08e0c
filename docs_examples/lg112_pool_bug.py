"""LG112, the bug: a psycopg_pool AsyncConnectionPool opened in one asyncio.run(), used in
the next."""

import asyncio
import contextlib
import os

from psycopg_pool import AsyncConnectionPool

# psycopg wants a plain postgresql:// conninfo, without SQLAlchemy's "+asyncpg".
CONNINFO = os.environ["DATABASE_URL"].replace("+asyncpg", "")
pool = AsyncConnectionPool(CONNINFO, open=False, min_size=1, max_size=4, timeout=3)


async def job(number: int) -> None:
    await pool.open(wait=True)  # a no-op after the first job: the pool stays open
    async with contextlib.AsyncExitStack() as stack:
        # Job n holds n connections at once: the pool's workers open the missing ones.
        conns = [await stack.enter_async_context(pool.connection()) for _ in range(number)]
        rows = [await (await conn.execute("select %s", (number,))).fetchone() for conn in conns]
        print(f"job {number}:", *(row[0] for row in rows))


if __name__ == "__main__":
    for number in (1, 2):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
