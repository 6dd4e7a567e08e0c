"""LG111, fix: each asyncio.run() job creates the lock its tasks share, inside its loop."""

import asyncio


async def refresh(lock: asyncio.Lock, number: int) -> int:
    async with lock:
        await asyncio.sleep(0.01)
        return number


async def job(number: int) -> None:
    lock = asyncio.Lock()  # created inside the loop that uses it
    results = await asyncio.gather(refresh(lock, number), refresh(lock, number))
    print(f"job {number}: {results[0]}")


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
