"""What the psycopg_pool guard costs: ``async with pool.connection(): pass``, off vs raise.

    .venv/bin/python benchmarks/psycopg_pool_checkout.py            # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/psycopg_pool_checkout.py --quick    # ~30 s, rough numbers

One ``psycopg_pool.AsyncConnectionPool`` (one idle connection, ``min_size=1``) against the
throwaway PostgreSQL of tools/pgserver.py (or ``LOOPGUARD_TEST_DSN``); each operation is a
checkout and a return with no query: the path the guard adds to (``getconn()`` and
``putconn()``), with nothing to hide it.

Arms: **off**, a process in which loopguard is never imported (the worker checks that the
pool's methods are psycopg_pool's own); **raise**, ``loopguard.install("raise")`` after
psycopg_pool is imported, the pool created and opened after it (the worker checks it is
tracked and bound).  Timings: every round starts a fresh worker per arm; the arms take turns,
one sample each, in alternating order; a round's ratio is raise/off of its medians, and the
result is the median of the rounds' ratios.  Instructions (with valgrind): client
instructions per operation, from the difference of a process doing N operations and one
doing 3N (``_instructions.per_operation``), the garbage collector paused.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(HERE))

ARMS = ("off", "raise")


def _assert_arm(arm: str, pool: Any) -> None:
    import psycopg_pool

    cls = psycopg_pool.AsyncConnectionPool
    patched = [
        hasattr(method, "__loopguard_wrapped__")
        for method in (cls._check_open_getconn, cls._check_pool_putconn, cls._open)
    ]
    if arm == "off":
        assert not any(patched) and "loopguard" not in sys.modules, "off arm is patched"
        return
    from loopguard.integrations import _psycopg_pool

    assert all(patched), "raise arm is not patched"
    facts = _psycopg_pool.POOLS.get(pool)
    assert facts is not None and facts.binding is not None, "the pool is not tracked"


def _worker(arm: str, dsn: str, n: int) -> int:
    """Answer ``ready``, then one line per command read from stdin: ``sample`` (time n
    operations: wall and CPU seconds per operation, as JSON), ``run`` (n operations, untimed,
    gc paused), ``quit``."""
    import asyncio

    import psycopg_pool

    if arm == "raise":
        import loopguard

        loopguard.install("raise")

    async def main() -> None:
        async with psycopg_pool.AsyncConnectionPool(
            dsn, min_size=1, max_size=1, open=False
        ) as pool:
            await pool.wait()

            async def operation() -> None:
                async with pool.connection():
                    pass

            for _ in range(500):  # caches filled, the connection warm
                await operation()
            _assert_arm(arm, pool)
            print("ready", flush=True)
            loop = asyncio.get_running_loop()
            while True:
                command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
                if command == "sample":
                    wall, cpu = time.perf_counter(), time.process_time()
                    for _ in range(n):
                        await operation()
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    print(json.dumps([wall / n, cpu / n]), flush=True)
                elif command == "run":
                    gc.disable()
                    for _ in range(n):
                        await operation()
                    gc.enable()
                    print("done", flush=True)
                else:
                    break

    asyncio.run(main())
    return 0


def _env() -> Dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOPGUARD", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE"))
    }


def _command(arm: str, dsn: str, n: int) -> List[str]:
    return [sys.executable, str(Path(__file__)), "--worker", arm, dsn, str(n)]


class _Arm:
    def __init__(self, arm: str, dsn: str, n: int) -> None:
        self.proc = subprocess.Popen(
            _command(arm, dsn, n),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=str(ROOT),
        )
        assert self._ask(None) == "ready"

    def _ask(self, command: Any) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return line

    def sample(self) -> List[float]:
        return json.loads(self._ask("sample"))  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def timed(dsn: str, rounds: int, samples: int, n: int) -> Dict[str, Any]:
    """Per arm the median seconds per operation (wall, CPU); the median of the rounds' ratios."""
    per_arm: Dict[str, List[List[float]]] = {arm: [] for arm in ARMS}
    ratios: Dict[str, List[float]] = {"wall": [], "cpu": []}
    for number in range(rounds):
        arms = {arm: _Arm(arm, dsn, n) for arm in ARMS}
        try:
            got: Dict[str, List[List[float]]] = {arm: [] for arm in ARMS}
            for index in range(samples):
                for arm in ARMS if (number + index) % 2 == 0 else ARMS[::-1]:
                    got[arm].append(arms[arm].sample())
        finally:
            for worker in arms.values():
                worker.close()
        for which, column in (("wall", 0), ("cpu", 1)):
            off = statistics.median(s[column] for s in got["off"])
            on = statistics.median(s[column] for s in got["raise"])
            ratios[which].append(on / off)
        for arm in ARMS:
            per_arm[arm] += got[arm]
    return {
        "off_us": statistics.median(s[0] for s in per_arm["off"]) * 1e6,
        "raise_us": statistics.median(s[0] for s in per_arm["raise"]) * 1e6,
        "wall_ratio": statistics.median(ratios["wall"]),
        "cpu_ratio": statistics.median(ratios["cpu"]),
    }


def instructions(dsn: str, n: int) -> Dict[str, float]:
    import _instructions

    if not _instructions.available():
        return {}
    return {
        arm: _instructions.per_operation(_command(arm, dsn, n), n, _env(), str(ROOT))
        for arm in ARMS
    }


def main(argv: List[str]) -> int:
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: rough numbers")
    args = parser.parse_args(argv)
    rounds, samples, n = (3, 5, 500) if args.quick else (7, 9, 2000)
    from pgserver import throwaway_postgres

    with throwaway_postgres() as dsn:
        result = timed(dsn, rounds, samples, n)
        counts = instructions(dsn, 500 if args.quick else 2000)
    print("| `async with pool.connection(): pass` | off | raise | ratio |")
    print("|---|---|---|---|")
    print(
        f"| wall time per operation | {result['off_us']:.1f} us | {result['raise_us']:.1f} us | "
        f"x{result['wall_ratio']:.3f} (CPU time x{result['cpu_ratio']:.3f}) |"
    )
    if counts:
        extra = counts["raise"] - counts["off"]
        print(
            f"| instructions per operation | {counts['off']:,.0f} | {counts['raise']:,.0f} | "
            f"+{extra:,.0f} (x{counts['raise'] / counts['off']:.3f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
