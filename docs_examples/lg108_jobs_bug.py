"""LG108, the bug: a module-level httpx.AsyncClient shared by several asyncio.run() jobs."""

import asyncio
import os

import httpx

client = httpx.AsyncClient(base_url=os.environ["HTTP_URL"])


async def job(number: int) -> None:
    response = await client.get("/")
    print(f"job {number}:", response.status_code)


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
