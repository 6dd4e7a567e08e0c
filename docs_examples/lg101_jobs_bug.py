"""LG101, the bug: a module-level engine shared by several asyncio.run() jobs."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


async def job(number: int) -> None:
    async with engine.connect() as conn:
        print(f"job {number}:", await conn.scalar(text(f"select {number}")))


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
