"""What the httpx and aiohttp guards cost: a GET to a local keep-alive server, off vs raise.

    .venv/bin/python benchmarks/http_clients.py            # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/http_clients.py --quick    # ~40 s, rough numbers

Rows (each a ratio against "off" measured in the same run):

- ``httpx GET``: ``await client.get("/")`` on one ``httpx.AsyncClient`` (a kept-alive
  connection) to tools/httpserver.py on 127.0.0.1; target: within 2 % of off.
- ``aiohttp GET``: ``async with session.get("/") as r: await r.read()`` on one
  ``aiohttp.ClientSession``, the same way.

Arms: **off**, a process in which loopguard is never imported (the worker checks that httpx's,
httpcore's and aiohttp's methods are their own); **raise**, ``loopguard.install("raise")``
after the libraries are imported (so both arms import them in the same order), the client
created after it and bound by its warm-up requests (the worker checks that too).

Timings: every round starts a fresh worker process per arm (``--worker``); the arms then
take turns, one sample each, in alternating order; the ratio of a round is raise/off of its
medians, and the row shows the median of the rounds' ratios.  Instructions (with valgrind):
client instructions per GET, from the difference of a process doing N GETs and one doing 3N
(``_instructions.per_operation``).

For ``benchmarks/run.py``: ``rows(quick)`` returns the rows as dicts, ``main()`` prints them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(HERE))

import _arm_process  # noqa: E402 - benchmarks/ on sys.path first

LIBRARIES = ("httpx", "aiohttp")
TARGET = 1.02  # the httpx row's target: within 2 % of off


# -- the worker: one arm, one library, one process -------------------------------------------


def _assert_arm(arm: str, library: str, client: Any) -> None:
    import aiohttp
    import httpcore
    import httpx

    patched = [
        hasattr(method, "__loopguard_wrapped__")
        for method in (
            httpx.AsyncClient.__init__,
            httpcore.AsyncConnectionPool.handle_async_request,
            aiohttp.ClientSession._request,
        )
    ]
    if arm == "off":
        assert not any(patched) and "loopguard" not in sys.modules, "off arm is patched"
        return
    assert all(patched), "raise arm is not patched"
    if library == "httpx":
        from loopguard.integrations import _httpx

        facts = _httpx.POOLS.get(client._transport._pool)
        assert facts is not None and facts.binding is not None, "the pool is not tracked"
    else:
        from loopguard.integrations import _aiohttp

        assert client in _aiohttp.SESSIONS, "the session is not tracked"


def _worker(arm: str, library: str, url: str, n: int) -> int:
    """Warm up, then answer commands (``_arm_process.serve``: ``sample`` times n GETs,
    ``run`` does n GETs untimed with the collector paused, ``quit``)."""
    import asyncio

    import aiohttp  # every arm imports both libraries, in the same order
    import httpx

    if arm == "raise":
        import loopguard

        loopguard.install("raise")

    async def main() -> None:
        if library == "httpx":
            client: Any = httpx.AsyncClient(base_url=url)

            async def get() -> None:
                await client.get("/")

        else:
            client = aiohttp.ClientSession(url)

            async def get() -> None:
                async with client.get("/") as response:
                    await response.read()

        for _ in range(200):  # the connection opened, the caches filled
            await get()
        _assert_arm(arm, library, client)
        await _arm_process.serve(get, n)
        await (client.aclose() if library == "httpx" else client.close())

    asyncio.run(main())
    return 0


# -- the driver --------------------------------------------------------------------------------


def _command(arm: str, library: str, url: str, n: int) -> List[str]:
    return [sys.executable, str(Path(__file__)), "--worker", arm, library, url, str(n)]


def timed(library: str, url: str, rounds: int, samples: int, n: int) -> Dict[str, Any]:
    """Per arm the median seconds per GET (wall, CPU); the median of the rounds' ratios."""
    by_round = _arm_process.alternating_rounds(
        lambda arm: _command(arm, library, url, n), str(ROOT), rounds, samples
    )
    return {"library": library, **_arm_process.summarize(by_round)}


def instructions(library: str, url: str, n: int) -> Dict[str, float]:
    """Client instructions per GET, per arm (valgrind)."""
    return _arm_process.instructions_per_operation(
        lambda arm: _command(arm, library, url, n), n, str(ROOT)
    )


def rows(quick: bool = False, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Every row, measured against a throwaway server started here."""
    import _instructions
    from httpserver import throwaway_http_server

    rounds, samples, n = (3, 3, 200) if quick else (8, 5, 500)
    found = []
    with throwaway_http_server() as url:
        for library in LIBRARIES:
            log(f"{library} GET: {rounds} rounds x {samples} samples x {n} GETs per arm")
            row = timed(library, url, rounds, samples, n)
            if _instructions.available():
                log(f"{library} GET: instructions under valgrind")
                row["instructions"] = instructions(library, url, 100 if quick else 300)
            found.append(row)
    return found


def render(found: List[Dict[str, Any]]) -> str:
    lines = [
        "| row | off | raise | raise/off (wall) | raise/off (CPU) | instructions per GET "
        "(off, raise) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in found:
        counts = row.get("instructions")
        shown = (
            f"{counts['off']:,.0f}, {counts['raise']:,.0f} (x{counts['raise'] / counts['off']:.4f})"
            if counts
            else "valgrind not found"
        )
        target = (
            ("pass" if row["ratio_wall"] <= TARGET else "FAIL") + " (<= x1.02)"
            if row["library"] == "httpx"
            else "-"
        )
        lines.append(
            f"| {row['library']} GET | {row['off_us']:.1f} us | {row['raise_us']:.1f} us | "
            f"x{row['ratio_wall']:.3f} | x{row['ratio_cpu']:.3f} | {shown} | {target} |"
        )
    return "\n".join(lines)


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: rough numbers")
    parser.add_argument("--worker", nargs=4, metavar=("ARM", "LIBRARY", "URL", "N"))
    args = parser.parse_args(argv)
    if args.worker:
        arm, library, url, n = args.worker
        return _worker(arm, library, url, int(n))
    found = rows(args.quick, log=lambda text: print(text, file=sys.stderr))
    print(render(found))
    httpx_row = next(row for row in found if row["library"] == "httpx")
    return 0 if httpx_row["ratio_wall"] <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
