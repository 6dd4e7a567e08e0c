"""LG101, fix: each asyncio.run() job disposes the shared engine before its loop ends."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


async def job(number: int) -> None:
    try:
        async with engine.connect() as conn:
            print(f"job {number}:", await conn.scalar(text(f"select {number}")))
    finally:
        await engine.dispose()  # the next job's loop starts with an empty pool


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
