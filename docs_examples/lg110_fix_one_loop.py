"""LG110, fix: one asyncio.run() for all the jobs, so the shared client stays on its loop."""

import asyncio
import os

import redis.asyncio as redis


async def job(client: redis.Redis, number: int) -> None:
    await client.set("job", number)
    print(f"job {number}:", int(await client.get("job")))


async def main() -> None:
    async with redis.Redis.from_url(os.environ["REDIS_URL"]) as client:
        for number in (1, 2, 3):
            await job(client, number)


if __name__ == "__main__":
    asyncio.run(main())
