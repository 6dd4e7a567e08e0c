"""LG109, fix: each asyncio.run() job creates its own session and closes it before returning."""

import asyncio
import os

import aiohttp


async def job(number: int) -> None:
    async with aiohttp.ClientSession(os.environ["HTTP_URL"]) as session:
        async with session.get("/") as response:
            print(f"job {number}:", response.status)


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
