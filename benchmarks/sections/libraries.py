"""Rows L: one per guarded library, each measured by the library's own benchmark module.

Each library's benchmark is a module in benchmarks/ that runs on its own
(``.venv/bin/python benchmarks/http_clients.py``) and gives this section its rows.  The
contract, one ``dict`` per row (the keys of ``_report.Row``)::

    {"row": "L1 httpx", "what": "httpx GET ...", "off": "52.1 us", "raise": "52.8 us",
     "compare": "x1.013, 95% CI x0.99..x1.03", "target": "within 2 %", "verdict": True,
     "ci": (0.99, 1.03), "limit": 1.02}   # ci/limit optional: UNRESOLVED when ci straddles

``MODULES`` lists the modules and how to get their rows: ``rows(quick, log)`` for modules
that speak the contract, or an adapter here for one that predates it.  A module that is not
on this tree shows as a row saying so, with its issue-14 target, so that a missing library
is visible in the table rather than silently absent.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from _env import log
from _report import Row
from _stats import median_ci

from . import Context

RowDict = Dict[str, Any]


class Library(NamedTuple):
    module: str  # in benchmarks/
    what: str  # the rows it measures, for the placeholder row when it is missing
    targets: str  # issue 14's targets, for the same
    # default: module.rows(quick, log); an adapter gets (module, quick, row key prefix)
    adapter: Optional[Callable[[Any, bool, str], List[RowDict]]] = None


def _http_clients(module: Any, quick: bool, prefix: str) -> List[RowDict]:
    """benchmarks/http_clients.py's rows (httpx: within 2 % of off; aiohttp: reported)."""
    found = []
    for row in module.rows(quick, log=log):
        library = row["library"]
        ratios = row.get("round_ratios_wall") or [row["ratio_wall"]]
        low, high = median_ci(ratios)
        counts = row.get("instructions")
        instructions = (
            f"; instructions {counts['off']:,.0f} -> {counts['raise']:,.0f} per GET "
            f"(x{counts['raise'] / counts['off']:.4f})"
            if counts
            else ""
        )
        limit = module.TARGET if library == "httpx" else None
        found.append(
            {
                "row": f"{prefix} {library}",
                "what": f"{library} GET to a local keep-alive server (tools/httpserver.py): "
                f"wall per GET, {row['rounds']} rounds",
                "off": f"{row['off_us']:.1f} us",
                "raise": f"{row['raise_us']:.1f} us",
                "compare": f"median of round ratios x{row['ratio_wall']:.3f}, 95% CI "
                f"x{low:.3f}..x{high:.3f}; CPU x{row['ratio_cpu']:.3f}{instructions}",
                "target": f"within {round((limit - 1) * 100)} % of off" if limit else "",
                "verdict": row["ratio_wall"] <= limit if limit else None,
                "ci": (low, high) if limit and len(ratios) > 1 else None,
                "limit": limit,
            }
        )
        if counts and limit:
            ratio = counts["raise"] / counts["off"]
            found.append(
                {
                    "row": f"{prefix} {library} instr",
                    "what": f"{library} GET: client instructions per GET (valgrind)",
                    "off": f"{counts['off'] / 1e3:,.1f} k",
                    "raise": f"{counts['raise'] / 1e3:,.1f} k",
                    "compare": f"{(counts['raise'] - counts['off']) / 1e3:+,.1f} k, x{ratio:.4f}",
                    "target": f"within {round((limit - 1) * 100)} % (client CPU work)",
                    "verdict": ratio <= limit,
                }
            )
    return found


def _redis_get(module: Any, quick: bool, prefix: str) -> List[RowDict]:
    """benchmarks/redis_get.py's two measures (its own throwaway redis-server): CPU per GET,
    the arms' workers taking turns, and instructions per GET (valgrind)."""
    from redisserver import throwaway_redis  # tools/, on sys.path through _env

    limit = 1.02  # issue 14: within 2 % of off
    with throwaway_redis() as url:
        log("[L] redis GET: paired CPU samples")
        timed = module.timed_row(url, rounds=10 if quick else 30, n=1000 if quick else 2000)
        log("[L] redis GET: instructions (valgrind)")
        counted = module.instructions_row(url, n=500 if quick else 2000)
    ratios = timed["ratios"]
    low, high = median_ci(ratios)
    found = [
        {
            "row": f"{prefix} redis",
            "what": "redis.asyncio GET to a local redis-server (tools/redisserver.py): client "
            f"CPU per GET, {timed['rounds']} paired samples of {timed['gets_per_sample']} GETs",
            "off": f"{timed['off_us']:.1f} us",
            "raise": f"{timed['raise_us']:.1f} us",
            "compare": f"median of paired ratios x{timed['ratio']:.3f}, 95% CI "
            f"x{low:.3f}..x{high:.3f}",
            "target": "within 2 % of off",
            "verdict": timed["ratio"] <= limit,
            "ci": (low, high),
            "limit": limit,
        }
    ]
    if "skipped" in counted:
        found.append({"row": f"{prefix} redis instr", "what": f"redis GET: {counted['skipped']}"})
    else:
        found.append(
            {
                "row": f"{prefix} redis instr",
                "what": "redis GET: client instructions per GET (valgrind)",
                "off": f"{counted['off'] / 1e3:,.1f} k",
                "raise": f"{counted['raise'] / 1e3:,.1f} k",
                "compare": f"{counted['added'] / 1e3:+,.1f} k, x{counted['ratio']:.4f}",
                "target": "within 2 % (client CPU work)",
                "verdict": counted["ratio"] <= limit,
            }
        )
    return found


# The guarded libraries' benchmark modules, in the order their rows appear.
MODULES = (
    Library(
        "http_clients",
        "httpx and aiohttp GET to a local server",
        "httpx GET within 2 % of off",
        _http_clients,
    ),
    Library("redis_get", "redis GET to a local redis-server", "within 2 % of off", _redis_get),
    Library(
        "primitives",
        "asyncio.Lock() creation; acquire/release uncontended and contended",
        "creation at most +1 us; uncontended within 2 %; contended at most +1 us",
    ),
    Library(
        "sqlalchemy_held",
        "a statement on a held SQLAlchemy AsyncConnection; SELECT 1 through AsyncSession",
        "at most +0.3 us per statement; SELECT 1 through AsyncSession within 3 % of off",
    ),
)


def _load(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise  # the module is there, something it imports is not: an error to show
        return None


def run(ctx: Context) -> None:
    for number, library in enumerate(MODULES, start=1):
        module = _load(library.module)
        if module is None or (library.adapter is None and not hasattr(module, "rows")):
            ctx.report.add(
                Row(
                    f"L{number}",
                    f"{library.what}: not measured, benchmarks/{library.module}.py with "
                    f"rows(quick, log) is not on this tree (target: {library.targets})",
                    {},
                )
            )
            continue
        log(f"[L] {library.what} (benchmarks/{library.module}.py)")
        if library.adapter is not None:
            found = library.adapter(module, ctx.quick, f"L{number}")
        else:
            found = module.rows(ctx.quick, log)
        for row in found:
            ctx.report.add(
                Row(
                    str(row["row"]),
                    str(row["what"]),
                    {"off": str(row.get("off", "")), "raise": str(row.get("raise", ""))},
                    compare=str(row.get("compare", "")),
                    target=str(row.get("target", "")),
                    verdict=row.get("verdict"),
                    ci=row.get("ci"),
                    limit=row.get("limit"),
                )
            )
