"""Row 4: a generated 200-test async pytest suite, run by a real pytest, off vs --loopguard.

The suite (``write_suite``): 10 files of 20 tests; a function-scoped engine fixture creates,
yields and disposes an engine; half the tests use ``engine.connect()``, half an
``AsyncSession``.  Its ``conftest.py`` writes, at the end of the session, whether loopguard
was installed and which of the integrations' patch points (their own tables,
``_patch_tables``) carried loopguard's wrapper: none in the off runs, all in the on runs.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from _env import BENCH_DIR, clean_env, log
from _report import Row
from _stats import fmt_ratio, fmt_stat, median, median_ci

from . import Context

_SUITE_CONFTEST = """\
import json
import os
import sys

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

    sys.path.insert(0, os.environ["BENCH_DIR"])
    from _patch_tables import marked_points

    patched, unpatched = marked_points()
    with open(os.environ["BENCH_STATE_FILE"], "w") as f:
        json.dump({"installed": loopguard.is_installed(), "mode": loopguard.mode(),
                   "patched": patched, "unpatched": unpatched}, f)
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
        env = dict(
            clean_env(),
            BENCH_DATABASE_URL=url,
            BENCH_STATE_FILE=str(state_file),
            BENCH_DIR=str(BENCH_DIR),
        )
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        yield root, env, {"off": base, "raise": [*base, "--loopguard"]}


def check_suite_state(root: Path, arm_name: str) -> None:
    """What the generated conftest.py saw: loopguard installed and every patch point of the
    imported libraries patched when on; not installed and none patched when off."""
    state_file = root / "state.json"
    state = json.loads(state_file.read_text())
    state_file.unlink()
    if arm_name == "raise":
        ok = state["installed"] and state["patched"] and not state["unpatched"]
    else:
        ok = not state["installed"] and not state["patched"]
    if not ok:
        raise AssertionError(f"suite arm {arm_name} ran with loopguard state {state}")


def run(ctx: Context) -> None:
    tests, pairs = (20, 1) if ctx.quick else (200, 10)
    log(f"[4] pytest suite: {tests} tests, {pairs} alternating off/on pairs")
    times: Dict[str, List[float]] = {"off": [], "raise": []}
    cpu: Dict[str, List[float]] = {"off": [], "raise": []}
    ratios, cpu_ratios = [], []

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    with generated_suite(ctx.url, tests) as (root, env, args):
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
    for arm_name in ("off", "raise"):  # one pyperf run per pytest process
        ctx.report.samples.add("4 wall", arm_name, [[t] for t in times[arm_name]], "second")
        ctx.report.samples.add("4 cpu", arm_name, [[c] for c in cpu[arm_name]], "second")
    interval = median_ci(ratios)
    ctx.report.add(
        Row(
            "4 wall",
            f"pytest run of a {tests}-test async suite, per-test engine fixture: wall time "
            f"of the pytest process, {pairs} alternating pairs",
            {"off": fmt_stat(times["off"]), "raise": fmt_stat(times["raise"]), "debug": "-"},
            compare=f"{fmt_ratio(ratios)}; 95% CI of the median ratio "
            f"x{interval[0]:.3f}..x{interval[1]:.3f}",
            target="<= 3% slower",
            verdict=median(ratios) <= 1.03,
            ci=interval,
            limit=1.03,
        )
    )
    cpu_added = median([r - o for r, o in zip(cpu["raise"], cpu["off"])])
    ctx.report.add(
        Row(
            "4 cpu",
            "the same runs: CPU time (user + system) of the pytest process",
            {"off": fmt_stat(cpu["off"]), "raise": fmt_stat(cpu["raise"]), "debug": "-"},
            compare=f"{fmt_ratio(cpu_ratios)}; added CPU / off wall = "
            f"{cpu_added / median(times['off']):+.1%}",
        )
    )
