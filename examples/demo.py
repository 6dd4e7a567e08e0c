"""The demo: one real test suite with a cached engine, run without and then with loopguard.

Run it with ``scripts/demo`` (starts a throwaway PostgreSQL and sets LOOPGUARD_TEST_DSN), or
point LOOPGUARD_TEST_DSN at any server and run ``python examples/demo.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = HERE / "cached_engine"
sys.path.insert(0, str(HERE.parent / "tools"))

from pgserver import ENV_DSN, sqlalchemy_url  # noqa: E402


def run_suite(title: str, *extra: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    env["DATABASE_URL"] = sqlalchemy_url(os.environ[ENV_DSN])
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "--tb=line",
        "--show-capture=no",
        "-p",
        "no:cacheprovider",
        *extra,
    ]
    print(f"\n{'=' * 78}\n{title}\n$ {' '.join(['pytest', *command[3:]])}\n{'=' * 78}", flush=True)
    return subprocess.run(command, cwd=SUITE, env=env).returncode


def main() -> int:
    if ENV_DSN not in os.environ:
        print(f"{ENV_DSN} is not set: run this through scripts/demo.", file=sys.stderr)
        return 2
    print("examples/cached_engine: an @lru_cache engine and a module-level async_sessionmaker,")
    print("three tests, pytest-asyncio giving each test its own event loop.")
    without = run_suite("1. WITHOUT loopguard: errors from deep inside asyncpg")
    with_guard = run_suite("2. WITH loopguard (--loopguard): the same suite", "--loopguard")
    print(
        f"\nexit codes: without loopguard {without}, with loopguard {with_guard} "
        "(both runs fail: the suite has a real bug; only the second says which and why)"
    )
    # The demo succeeds when both runs failed the way they should (pytest exit code 1).
    return 0 if (without, with_guard) == (1, 1) else 1


if __name__ == "__main__":
    raise SystemExit(main())
