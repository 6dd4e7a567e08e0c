"""Rows 1-3: one operation at a time in three worker processes (off, raise, debug) that take
turns, one sample each, in rotating order (``run_interleaved``; benchmarks/README.md).

A row is a line of ``TIMED``: its key, the ``--only`` section it belongs to, its title, the
operations per sample and per instruction-count run, and its target.  The operation itself
is ``_worker.benches()[key]``: a new row is one line here and one entry there.
"""

from __future__ import annotations

import random
import sys
from typing import Dict, List, NamedTuple, Optional, Tuple

from _arm_process import ArmProcess
from _arms import ARMS
from _env import BENCH_DIR, NEUTRAL_CWD, clean_env, log
from _report import Row
from _stats import fmt_diff, fmt_ratio, fmt_stat, fmt_time, median, median_ci

from . import Context

WORKER = BENCH_DIR / "_worker.py"


class Timed(NamedTuple):
    key: str
    section: str  # the --only name
    title: str
    ops: int  # operations per sample (--quick divides by 4)
    instruction_ops: int  # per valgrind run (the difference of two runs is 2N of them)
    wall_target: str = ""  # "added <= 2 us" (1a, 3a, 3b) or "<= 3% slower" (2), on wall time


TIMED = (
    Timed(
        "1a",
        "checkout",
        "pool checkout+checkin, pool.connect().close() on an AsyncEngine's pool",
        400,
        2000,
        "added <= 2 us",
    ),
    Timed("1b", "checkout", "checkout+checkin via `async with engine.connect(): pass`", 100, 500),
    Timed(
        "2",
        "session",
        "SELECT 1 via `async with AsyncSession() as s: await s.execute(...)`",
        40,
        150,
        "<= 3% slower",
    ),
    # Issue 12.1: a held connection's statements, each checked (psycopg: pre_exec; asyncpg:
    # the asyncpg guard's own per-call checks, which cover a held connection too).
    Timed(
        "2b",
        "session",
        "held connection (asyncpg): `await conn.execute(select 1)` on one AsyncConnection",
        40,
        300,
    ),
    Timed(
        "2c",
        "session",
        "held connection (psycopg): `await conn.execute(select 1)` on one AsyncConnection",
        40,
        300,
    ),
    Timed(
        "3a", "asyncpg", "asyncpg pool: `async with pool.acquire(): pass`", 40, 300, "added <= 2 us"
    ),
    Timed(
        "3b",
        "asyncpg",
        "asyncpg pool: acquire + fetchval('select 1') + release",
        40,
        200,
        "added <= 2 us",
    ),
)


class Worker(ArmProcess):
    """One arm in its own process (benchmarks/_worker.py), answering one line per command."""

    def __init__(
        self, arm_name: str, key: str, n: int, dsn: str, env: Optional[Dict[str, str]] = None
    ) -> None:
        env = dict(env if env is not None else clean_env())
        if arm_name == "debug":
            env["PYTHONASYNCIODEBUG"] = "1"
        cmd = [sys.executable, str(WORKER), arm_name, key, str(n), dsn]
        super().__init__(arm_name, cmd, env, NEUTRAL_CWD)


# A new layout seed per round (see run_interleaved): a rerun samples new layouts.
LAYOUT_SEEDS = random.Random()


Sample = Tuple[float, float]  # (wall seconds per op, CPU seconds per op)
Triple = Dict[str, Sample]  # one sample of each arm, taken in turn


def run_interleaved(
    key: str, n: int, dsn: str, rounds: int, samples: int
) -> Tuple[List[List[Triple]], bool]:
    """Rounds of triples, and whether loopguard guarded the resource in every round.

    Each round starts one fresh worker process per arm (off: loopguard never imported;
    raise: installed before the engine is created; debug: PYTHONASYNCIODEBUG=1), each with
    its own event loop and engine or pool, warmed up.  Then the arms take turns, one sample
    each, in rotating order, while the other two wait idle on a pipe: a burst of load from
    other processes lands on all three samples of a triple alike.  The three workers of a
    round share a memory-layout seed (LOOPGUARD_BENCH_LAYOUT, see _worker.py), every round
    gets a new one.  The samples of a round share their processes (and layouts), so a round,
    not a triple, is the independent unit.
    """
    result: List[List[Triple]] = []
    guarded_every_round = True
    for r in range(rounds):
        seed = LAYOUT_SEEDS.randrange(1 << 30)
        env = dict(clean_env(), LOOPGUARD_BENCH_LAYOUT=f"{seed}:" + "." * (seed % 4096))
        workers = {a: Worker(a, key, n, dsn, env) for a in ARMS}
        triples: List[Triple] = []
        try:
            for a, worker in workers.items():
                ready = worker.ask(None).split()
                if a == "raise":
                    guarded_every_round &= ready[1] == "True"
            for s in range(samples):
                turn = r * samples + s
                triple = {}
                for a in ARMS[turn % 3 :] + ARMS[: turn % 3]:
                    wall, cpu = workers[a].ask("sample").split()
                    triple[a] = (float(wall), float(cpu))
                triples.append(triple)
        finally:
            for worker in workers.values():
                worker.close()
        result.append(triples)
        log(
            f"  {key} round {r + 1}/{rounds}: "
            + ", ".join(f"{a} {fmt_time(median([t[a][0] for t in triples]))}" for a in ARMS)
        )
    return result, guarded_every_round


def run(ctx: Context) -> None:
    for row in TIMED:
        if row.section not in ctx.only:
            continue
        _measure(ctx, row)


def _measure(ctx: Context, row: Timed) -> None:
    key, title = row.key, row.title
    # Rounds, not samples, are what the confidence intervals count (run_interleaved):
    # many short rounds.  Row 2 has a round trip to PostgreSQL per op and a 3% target.
    rounds, samples = (2, 4) if ctx.quick else (30 if key == "2" else 20, 8)
    n = row.ops // 4 if ctx.quick else row.ops
    log(f"[{key}] {title}: {rounds} rounds x {samples} samples x {n} ops")
    by_round, guarded = run_interleaved(key, n, ctx.dsn, rounds, samples)
    triples = [t for round_triples in by_round for t in round_triples]
    if key.startswith(("1", "2")) and not guarded:
        raise AssertionError(f"{key}: the raise arm's pool was not tracked by loopguard")
    note = ""
    if key.startswith("3") and not guarded:
        note = (
            "the installed loopguard has no asyncpg integration: the raise arm runs "
            "with loopguard installed but nothing on this path patched"
        )
    elif key == "1b":
        note = "the same one checkout as 1a inside more code: a noisier estimate"
    for metric, index in (("wall", 0), ("client CPU", 1)):
        row_key = f"{key} {'wall' if index == 0 else 'cpu'}"
        for a in ARMS:
            ctx.report.samples.add(
                row_key, a, [[t[a][index] for t in r] for r in by_round], "second"
            )

        def added(t: Triple, i: int = index) -> float:
            return t["raise"][i] - t["off"][i]

        def ratio(t: Triple, i: int = index) -> float:
            return t["raise"][i] / t["off"][i]

        # One value per round, the median over its triples: rounds are independent.
        round_diffs = [median([added(t) for t in r]) for r in by_round]
        round_ratios = [median([ratio(t) for t in r]) for r in by_round]
        compare = f"{fmt_diff([added(t) for t in triples])}, "
        compare += fmt_ratio([ratio(t) for t in triples])
        target, verdict = "", None
        ci: Optional[Tuple[float, float]] = None
        limit: Optional[float] = None
        judged = metric == "wall" and row.wall_target and (not key.startswith("3") or guarded)
        if judged and row.wall_target.startswith("added"):
            target, limit, ci = row.wall_target, 2e-6, median_ci(round_diffs)
            med = median(round_diffs)
            verdict = med <= limit
            compare += (
                f"; median of {rounds} round medians {fmt_time(med)}, "
                f"95% CI {fmt_time(ci[0])}..{fmt_time(ci[1])}"
            )
        else:
            interval = median_ci(round_ratios)
            med = median(round_ratios)
            if judged:
                target, limit, ci, verdict = row.wall_target, 1.03, interval, med <= 1.03
            compare += (
                f"; median of {rounds} round medians x{med:.3f}, "
                f"95% CI x{interval[0]:.3f}..x{interval[1]:.3f}"
            )
        ctx.report.add(
            Row(
                row_key,
                f"{title}: {metric} per op"
                + (f", {rounds} rounds, {len(triples)} triples" if index else ""),
                {a: fmt_stat([t[a][index] for t in triples]) for a in ARMS},
                compare=compare,
                compare_debug=fmt_ratio([t["debug"][index] / t["off"][index] for t in triples]),
                target=target,
                verdict=verdict,
                note=note if index == 0 else "",
                ci=ci,
                limit=limit,
            )
        )
