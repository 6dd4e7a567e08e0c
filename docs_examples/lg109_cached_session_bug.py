"""LG109, the bug: an aiohttp.ClientSession kept in a module global across asyncio.run() jobs."""

import asyncio
import os

import aiohttp

session = None


async def job(number: int) -> None:
    global session
    if session is None:  # created on the first job's loop, kept for the next jobs
        session = aiohttp.ClientSession(os.environ["HTTP_URL"])
    async with session.get("/") as response:
        print(f"job {number}:", response.status)


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
