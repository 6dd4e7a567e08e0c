"""LG101, a held connection: one AsyncSession, its transaction left open, shared by jobs."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])
session = AsyncSession(engine)  # one session for every job


async def job(number: int) -> None:
    # The first statement begins a transaction: the session holds its connection until
    # commit(), rollback() or close(), none of which comes before asyncio.run() returns.
    print(f"job {number}:", await session.scalar(text(f"select {number}")))


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
