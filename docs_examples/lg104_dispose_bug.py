"""LG104, the bug: the engine is disposed on a new event loop, not on the one it used."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


async def main() -> None:
    async with engine.connect() as conn:
        print("result:", await conn.scalar(text("select 1")))


if __name__ == "__main__":
    asyncio.run(main())
    asyncio.run(engine.dispose())  # a second loop: the connection belongs to the first
