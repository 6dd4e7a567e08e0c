"""LG104 and LG106, fix: dispose the engine on its own loop, before that loop ends."""

import asyncio
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])


async def main() -> None:
    try:
        async with engine.connect() as conn:
            print("result:", await conn.scalar(text("select 1")))
    finally:
        await engine.dispose()  # closes the pooled connection while its loop still runs


if __name__ == "__main__":
    asyncio.run(main())
