"""LG101, fix: each asyncio.run() job creates its own engine and disposes it."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def job(number: int) -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    try:
        async with engine.connect() as conn:
            print(f"job {number}:", await conn.scalar(text(f"select {number}")))
    finally:
        await engine.dispose()


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
