"""Rows "instr": rows 1-4 and 5a again, counted in instructions under valgrind (no noise).

Per operation (rows 1-3): a worker does its set-up, warm-up and N operations, another the
same and 3N; the difference is 2N operations (``_instructions.per_operation``).  Row 4: the
generated suite's whole pytest processes, off, on, off; and the same at a tenth of the tests:
the difference between the two suites is what the tests cost, without pytest's start-up and
loopguard's once-per-run work (row "4 per test").
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Tuple

import _instructions
from _arms import ARMS
from _env import NEUTRAL_CWD, clean_env, log
from _report import Row

from . import Context
from .suite import check_suite_state, generated_suite
from .timed import TIMED, WORKER

# Per test, loopguard's added instructions at most this fraction of the test's own (issue 15).
PER_TEST_LIMIT = 0.015


# Issue 12.1: the per-statement check of a held connection costs at most 0.3 us; counted in
# instructions (no noise).  Row 1a's off arm runs about 10.8 k instructions per us on these
# machines (valgrind count / timed median, 2026-12-06), so 0.3 us is about 3.2 k; 3,000 keeps
# a margin.  (It was 1,000 until 2026-12-06: a wrong conversion of the same 0.3 us.)
HELD_INSTRUCTION_LIMIT = 3000


def run(ctx: Context) -> None:
    """Rows 1-4 and 5a again, counted in instructions under valgrind: no noise to average."""
    report = ctx.report
    if not _instructions.available():
        report.add(Row("7", "instruction counts: skipped, valgrind not found", {}))
        return
    env = clean_env()
    log(
        f"[7] instruction counts ({_instructions.describe()}): "
        f"{', '.join(row.key for row in TIMED)}, suite, import"
    )
    jobs: Dict[Tuple[str, str], Any] = {}
    # Counts do not depend on load: run as many valgrind processes as there are CPUs.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for row in TIMED:
            n = row.instruction_ops // (5 if ctx.quick else 1)
            for arm_name in ARMS:
                arm_env = dict(env, PYTHONASYNCIODEBUG="1") if arm_name == "debug" else env
                cmd = [sys.executable, str(WORKER), arm_name, row.key, str(n), ctx.dsn]
                _instructions.warm(cmd, arm_env, NEUTRAL_CWD, stdin="quit\n")
                jobs[(row.key, arm_name)] = pool.submit(
                    _instructions.per_operation, cmd, n, arm_env, NEUTRAL_CWD
                )
        suite = pool.submit(suite_instructions, ctx.url, ctx.quick)
        # A tenth of the suite: the difference from the full suite is per-test work only.
        small_suite = pool.submit(suite_instructions, ctx.url, ctx.quick, 10)
        startup = pool.submit(import_instructions, env)
        for row in TIMED:
            per_op = {a: jobs[(row.key, a)].result() for a in ARMS}
            added = per_op["raise"] - per_op["off"]
            ratio = per_op["raise"] / per_op["off"]
            target, verdict = "", None
            note = ""
            if row.key == "2":
                target, verdict = "<= 3% slower (client CPU work)", ratio <= 1.03
            elif row.key == "2c":  # the held-connection check of every statement (pre_exec)
                target = f"added <= {HELD_INSTRUCTION_LIMIT} instructions per statement"
                verdict = added <= HELD_INSTRUCTION_LIMIT
                note = (
                    "against off: also counts what loopguard's presence moves in the process "
                    "(2-5 k per statement with no per-statement check at all, by layout)"
                )
            elif row.key == "2b":
                note = (
                    "asyncpg's statements pay the asyncpg guard's own per-call checks, which "
                    "also cover a held connection: nothing else is added per statement"
                )
            report.add(
                Row(
                    f"{row.key} instr",
                    f"{row.title}: client instructions per op (valgrind, GC paused)",
                    {a: f"{per_op[a] / 1e3:,.1f} k" for a in ARMS},
                    compare=f"{added / 1e3:+,.1f} k, x{ratio:.4f}",
                    compare_debug=f"x{per_op['debug'] / per_op['off']:.3f}",
                    target=target,
                    verdict=verdict,
                    note=note,
                )
            )
        suite_rows(ctx, suite.result(), small_suite.result())
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


def suite_rows(ctx: Context, counts: Dict[str, List[int]], small: Dict[str, List[int]]) -> None:
    off_spread = abs(counts["off"][0] - counts["off"][1]) / counts["off"][0]
    off = sum(counts["off"]) / 2
    ratio = counts["raise"][0] / off
    ctx.report.add(
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
    tests, small_tests = suite_sizes(ctx.quick, 10)
    added = counts["raise"][0] - off
    small_added = small["raise"][0] - sum(small["off"]) / 2
    per_test_added = (added - small_added) / (tests - small_tests)
    per_test_off = (off - sum(small["off"]) / 2) / (tests - small_tests)
    per_test_ratio = per_test_added / per_test_off
    ctx.report.add(
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
                f"{per_test_added / 1e3:+,.0f} k per test, x{1 + per_test_ratio:.4f}; "
                f"once per run {(added - tests * per_test_added) / 1e6:+,.1f} M"
            ),
            target=f"<= {PER_TEST_LIMIT:.1%} per test",
            verdict=per_test_ratio <= PER_TEST_LIMIT,
            note="a longer suite of the same tests tends to this ratio",
        )
    )


def suite_sizes(quick: bool, fraction: int = 1) -> Tuple[int, int]:
    """(tests in row 4's suite, tests in the 1/fraction-sized suite)."""
    tests = 20 if quick else 200
    return tests, tests // fraction


def suite_instructions(url: str, quick: bool, fraction: int = 1) -> Dict[str, List[int]]:
    """The suite of row 4 under valgrind: off, on, off (two off runs show the spread).

    ``fraction``: run a suite of 1/fraction the tests instead (its difference from the full
    suite is what the tests cost, without pytest's start-up)."""
    tests = suite_sizes(quick, fraction)[1]
    counts: Dict[str, List[int]] = {"off": [], "raise": []}
    with generated_suite(url, tests) as (root, env, args):
        _instructions.warm(args["raise"], env, str(root))  # .pyc and pytest's rewritten modules
        _instructions.warm(args["off"], env, str(root))
        for arm_name in ("off", "raise", "off"):
            counts[arm_name].append(_instructions.count(args[arm_name], env, str(root)))
            check_suite_state(root, arm_name)
    return counts


def import_instructions(env: Dict[str, str]) -> Tuple[int, int]:
    py = sys.executable
    _instructions.warm([py, "-c", "import loopguard"], env, NEUTRAL_CWD)
    return (
        _instructions.count([py, "-c", "pass"], env, NEUTRAL_CWD),
        _instructions.count([py, "-c", "import loopguard"], env, NEUTRAL_CWD),
    )
