"""LG110, the bug: a module-level redis.asyncio client shared by several asyncio.run() jobs
(a Celery task or a Django management command running its coroutine with asyncio.run())."""

import asyncio
import os

import redis.asyncio as redis

client = redis.Redis.from_url(os.environ["REDIS_URL"])  # no loop yet: connects on first use


async def job(number: int) -> None:
    await client.set("job", number)  # the first job's connection stays in the pool
    print(f"job {number}:", int(await client.get("job")))


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
