"""Row "4 per test" alone: the generated suite's instructions per test, under valgrind.

The same measurement as in the "instructions" section (which includes it), for a quick look
at loopguard's per-test cost without rows 1-3 and 5a:
``.venv/bin/python benchmarks/run.py --only pertest`` (about two minutes on 2 cores; the
counts do not depend on the machine's load).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import _instructions
from _env import log
from _report import Row

from . import Context
from .instructions import suite_instructions, suite_rows


def run(ctx: Context) -> None:
    if "instructions" in ctx.only:
        return  # the instructions section has these rows already
    if not _instructions.available():
        ctx.report.add(Row("4 per test", "instructions per test: skipped, no valgrind", {}))
        return
    log(f"[4 per test] the generated suite under valgrind ({_instructions.describe()})")
    with ThreadPoolExecutor(max_workers=2) as pool:
        suite = pool.submit(suite_instructions, ctx.url, ctx.quick)
        small_suite = pool.submit(suite_instructions, ctx.url, ctx.quick, 10)
        suite_rows(ctx, suite.result(), small_suite.result())
