#!/usr/bin/env python
"""A redis.asyncio GET with loopguard off and in raise mode (LG110's hot path), for
benchmarks/run.py to wire in as a row (target: raise within 2 % of off).

    .venv/bin/python benchmarks/redis_get.py            # both measures, ~1 minute
    .venv/bin/python benchmarks/redis_get.py --quick

Starts its own throwaway redis-server (tools/redisserver.py; ``LOOPGUARD_TEST_REDIS_URL`` uses
an existing one).  ``off`` means redis-py is not patched at all: a worker process that never
installs loopguard (checked); ``raise`` a worker that ran ``loopguard.install("raise")``.

- ``timed_row()``: the two arms' workers take turns, one sample each (a sample is N GETs on one
  client and loop, the collector paused), so that load from other processes hits both alike;
  the ratio is the median of the paired samples' ratios.
- ``instructions_row()``: instructions per GET under valgrind (``_instructions``): the client
  CPU work loopguard adds, without noise.

The worker speaks the protocol of ``_worker.py``: ``sample`` -> ``WALL CPU`` seconds per GET,
``run`` -> N GETs (for instruction counts), ``quit``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ARMS = ("off", "raise")


# -- the worker (one process per arm) -------------------------------------------------------


def _check_off() -> None:
    from redis.asyncio.connection import AbstractConnection, ConnectionPool

    for owner, name in (
        (ConnectionPool, "ensure_connection"),
        (AbstractConnection, "send_packed_command"),
    ):
        module = getattr(getattr(owner, name), "__module__", "")
        assert module == "redis.asyncio.connection", (
            f"off arm, but {owner.__name__}.{name} is {module}"
        )
    assert "loopguard" not in sys.modules or not sys.modules["loopguard"].is_installed()


def worker(arm: str, n: int, url: str) -> int:
    import redis.asyncio as redis  # first, in both arms

    if arm == "raise":
        import loopguard

        loopguard.install("raise")
    else:
        _check_off()
    loop = asyncio.new_event_loop()
    client = redis.Redis.from_url(url)

    async def gets(count: int) -> Tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            await client.get("loopguard:bench")
        return time.perf_counter() - wall, time.process_time() - cpu

    loop.run_until_complete(client.set("loopguard:bench", "x" * 16))
    loop.run_until_complete(gets(max(10, n // 4)))  # warm-up: connects, fills caches
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        gc.collect()
        gc.disable()
        wall, cpu = loop.run_until_complete(gets(n))
        gc.enable()
        print(f"{wall / n!r} {cpu / n!r}" if command == "sample" else "ok", flush=True)
    loop.run_until_complete(client.aclose())
    loop.close()
    return 0


# -- the rows -------------------------------------------------------------------------------


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    env["PYTHONHASHSEED"] = "0"
    return env


def _start(arm: str, n: int, url: str) -> subprocess.Popen:  # type: ignore[type-arg]
    cmd = [sys.executable, str(Path(__file__)), "worker", arm, str(n), url]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(), cwd=str(HERE)
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", arm
    return proc


def timed_row(url: str, rounds: int = 30, n: int = 2000) -> Dict[str, object]:
    """Median CPU seconds per GET of each arm and the median paired raise/off ratio."""
    procs = {arm: _start(arm, n, url) for arm in ARMS}
    samples: Dict[str, List[float]] = {arm: [] for arm in ARMS}
    try:
        for index in range(rounds):
            order = ARMS if index % 2 == 0 else ARMS[::-1]  # alternate who goes first
            for arm in order:
                proc = procs[arm]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("sample\n")
                proc.stdin.flush()
                _wall, cpu = proc.stdout.readline().split()
                samples[arm].append(float(cpu))
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.close()
            proc.wait(30)
    ratios = [r / o for r, o in zip(samples["raise"], samples["off"])]
    return {
        "off_us": statistics.median(samples["off"]) * 1e6,
        "raise_us": statistics.median(samples["raise"]) * 1e6,
        "ratio": statistics.median(ratios),
        "ratios": ratios,  # the paired samples' ratios, for a confidence interval of the median
        "rounds": rounds,
        "gets_per_sample": n,
    }


def instructions_row(url: str, n: int = 2000) -> Dict[str, object]:
    """Instructions per GET of each arm (valgrind), and their ratio."""
    sys.path.insert(0, str(HERE))
    import _instructions

    if not _instructions.available():
        return {"skipped": "valgrind not found"}
    per_get = {}
    for arm in ARMS:
        cmd = [sys.executable, str(Path(__file__)), "worker", arm, str(n), url]
        _instructions.warm(cmd, _env(), str(HERE), stdin="quit\n")
        per_get[arm] = _instructions.per_operation(cmd, n, _env(), str(HERE))
    return {
        "off": per_get["off"],
        "raise": per_get["raise"],
        "added": per_get["raise"] - per_get["off"],
        "ratio": per_get["raise"] / per_get["off"],
    }


def main(argv: List[str]) -> int:
    if argv[:1] == ["worker"]:
        return worker(argv[1], int(argv[2]), argv[3])
    quick = "--quick" in argv
    sys.path.insert(0, str(REPO / "tools"))
    from redisserver import throwaway_redis

    with throwaway_redis() as url:
        timed = timed_row(url, rounds=10 if quick else 30, n=1000 if quick else 2000)
        print(
            f"redis GET, CPU per GET: off {timed['off_us']:.1f} us, raise {timed['raise_us']:.1f}"
            f" us, raise/off {timed['ratio']:.4f} (median of {timed['rounds']} paired samples)"
        )
        counted = instructions_row(url, n=500 if quick else 2000)
        if "skipped" in counted:
            print(f"instructions: {counted['skipped']}")
        else:
            print(
                f"redis GET, instructions per GET: off {counted['off']:.0f}, raise "
                f"{counted['raise']:.0f} (+{counted['added']:.0f}), raise/off "
                f"{counted['ratio']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
