"""LG108, fix: each asyncio.run() job creates its own client and closes it before returning."""

import asyncio
import os

import httpx


async def job(number: int) -> None:
    async with httpx.AsyncClient(base_url=os.environ["HTTP_URL"]) as client:
        response = await client.get("/")
        print(f"job {number}:", response.status_code)


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
