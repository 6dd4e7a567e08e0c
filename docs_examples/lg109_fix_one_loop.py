"""LG109, fix: one asyncio.run() for all the jobs, so the shared session stays on its loop."""

import asyncio
import os

import aiohttp


async def job(session: aiohttp.ClientSession, number: int) -> None:
    async with session.get("/") as response:
        print(f"job {number}:", response.status)


async def main() -> None:
    async with aiohttp.ClientSession(os.environ["HTTP_URL"]) as session:
        for number in (1, 2, 3):
            await job(session, number)


if __name__ == "__main__":
    asyncio.run(main())
