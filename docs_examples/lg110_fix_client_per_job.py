"""LG110, fix: each asyncio.run() job creates its own client and closes it before returning."""

import asyncio
import os

import redis.asyncio as redis


async def job(number: int) -> None:
    async with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:  # aclose() on exit
        await client.set("job", number)
        print(f"job {number}:", int(await client.get("job")))


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
