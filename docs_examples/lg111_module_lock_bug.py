"""LG111, the bug: a module-level asyncio.Lock shared by several asyncio.run() jobs."""

import asyncio

lock = asyncio.Lock()  # created at import time, with no event loop running


async def refresh(number: int) -> int:
    async with lock:  # two tasks take turns: the second one waits for the lock
        await asyncio.sleep(0.01)
        return number


async def job(number: int) -> None:
    results = await asyncio.gather(refresh(number), refresh(number))
    print(f"job {number}: {results[0]}")


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
