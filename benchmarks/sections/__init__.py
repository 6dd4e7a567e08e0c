"""One module per section of the benchmarks; ``run.py`` runs those ``--only`` names.

Each section module has ``run(ctx)``, which adds its rows to ``ctx.report``.  A section is
named on the command line by the names in ``SECTIONS`` (rows 1-3 are one module, three
names).  A new library's rows: add them to ``libraries.MODULES`` (a module in benchmarks/
with ``rows(quick, log)``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Set

from _report import Report


@dataclass
class Context:
    """What every section gets: where to add rows, the database, and the run's options."""

    report: Report
    dsn: str  # libpq DSN of the throwaway PostgreSQL
    url: str  # the same database as a SQLAlchemy URL (asyncpg driver)
    quick: bool
    only: Set[str] = field(default_factory=set)


def _runners() -> Dict[str, Callable[[Context], None]]:
    from . import instructions, libraries, memory, per_test, startup, suite, timed

    return {
        "timed": timed.run,
        "instructions": instructions.run,
        "per_test": per_test.run,
        "suite": suite.run,
        "memory": memory.run,
        "startup": startup.run,
        "libraries": libraries.run,
    }


# --only name -> the section module that measures it, in the order they run.
SECTIONS = {
    "checkout": "timed",  # rows 1a, 1b
    "session": "timed",  # row 2
    "asyncpg": "timed",  # rows 3a, 3b
    "instructions": "instructions",  # rows "instr": valgrind
    "pertest": "per_test",  # row "4 per test" alone (also in "instructions")
    "suite": "suite",  # row 4
    "memory": "memory",  # rows 6
    "startup": "startup",  # rows 5
    "libraries": "libraries",  # one row per guarded library's own benchmark module
}


def run(ctx: Context) -> None:
    """Run every section that ``ctx.only`` names, each once, in SECTIONS order."""
    runners = _runners()
    done = set()
    for name, module in SECTIONS.items():
        if name in ctx.only and module not in done:
            done.add(module)
            runners[module](ctx)
