"""LG106, the bug: asyncio.run() ends while the engine's pool still holds a connection."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


async def main() -> None:
    async with engine.connect() as conn:
        print("result:", await conn.scalar(text("select 1")))


if __name__ == "__main__":
    asyncio.run(main())  # the loop closes; the pooled connection stays open on it
