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
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(HERE))

import _arm_process  # noqa: E402 - benchmarks/ on sys.path first


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
    """Warm up, then answer commands (``_arm_process.serve``: ``sample`` times n operations,
    ``run`` does n operations untimed with the collector paused, ``quit``)."""
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
            await _arm_process.serve(operation, n)

    asyncio.run(main())
    return 0


def _command(arm: str, dsn: str, n: int) -> List[str]:
    return [sys.executable, str(Path(__file__)), "--worker", arm, dsn, str(n)]


def timed(dsn: str, rounds: int, samples: int, n: int) -> Dict[str, Any]:
    """Per arm the median seconds per operation (wall, CPU); the median of the rounds' ratios."""
    by_round = _arm_process.alternating_rounds(
        lambda arm: _command(arm, dsn, n), str(ROOT), rounds, samples
    )
    return _arm_process.summarize(by_round)


def instructions(dsn: str, n: int) -> Dict[str, float]:
    import _instructions

    if not _instructions.available():
        return {}
    return _arm_process.instructions_per_operation(lambda arm: _command(arm, dsn, n), n, str(ROOT))


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
        f"x{result['ratio_wall']:.3f} (CPU time x{result['ratio_cpu']:.3f}) |"
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
