"""LG112, fix: each job opens its own pool and closes it before its loop ends."""

import asyncio
import contextlib
import os

from psycopg_pool import AsyncConnectionPool

CONNINFO = os.environ["DATABASE_URL"].replace("+asyncpg", "")


async def job(number: int) -> None:
    async with AsyncConnectionPool(CONNINFO, open=False, min_size=1, max_size=4) as pool:
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(pool.connection()) for _ in range(number)]
            rows = [await (await c.execute("select %s", (number,))).fetchone() for c in conns]
            print(f"job {number}:", *(row[0] for row in rows))


if __name__ == "__main__":
    for number in (1, 2):
        asyncio.run(job(number))
