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
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(HERE))

LIBRARIES = ("httpx", "aiohttp")
ARMS = ("off", "raise")
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
    """Answer ``ready``, then one line per command read from stdin: ``sample`` (time n GETs:
    wall and CPU seconds per GET, as JSON), ``run`` (n GETs, untimed, gc paused), ``quit``."""
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
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if command == "sample":
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(n):
                    await get()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(json.dumps([wall / n, cpu / n]), flush=True)
            elif command == "run":
                gc.disable()
                for _ in range(n):
                    await get()
                gc.enable()
                print("done", flush=True)
            else:
                break
        await (client.aclose() if library == "httpx" else client.close())

    asyncio.run(main())
    return 0


# -- the driver --------------------------------------------------------------------------------


def _env() -> Dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOPGUARD", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE"))
    }


def _command(arm: str, library: str, url: str, n: int) -> List[str]:
    return [sys.executable, str(Path(__file__)), "--worker", arm, library, url, str(n)]


class _Arm:
    def __init__(self, arm: str, library: str, url: str, n: int) -> None:
        self.proc = subprocess.Popen(
            _command(arm, library, url, n),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=str(ROOT),
        )
        assert self._ask(None) == "ready"

    def _ask(self, command: Any) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return line

    def sample(self) -> List[float]:
        return json.loads(self._ask("sample"))  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def timed(library: str, url: str, rounds: int, samples: int, n: int) -> Dict[str, Any]:
    """Per arm the median seconds per GET (wall, CPU); the median of the rounds' ratios."""
    per_arm: Dict[str, List[List[float]]] = {arm: [] for arm in ARMS}
    ratios: Dict[str, List[float]] = {"wall": [], "cpu": []}
    for number in range(rounds):
        arms = {arm: _Arm(arm, library, url, n) for arm in ARMS}
        try:
            got: Dict[str, List[List[float]]] = {arm: [] for arm in ARMS}
            for index in range(samples):
                order = ARMS if (number + index) % 2 == 0 else ARMS[::-1]
                for arm in order:
                    got[arm].append(arms[arm].sample())
        finally:
            for worker in arms.values():
                worker.close()
        for which, column in (("wall", 0), ("cpu", 1)):
            off = statistics.median(s[column] for s in got["off"])
            on = statistics.median(s[column] for s in got["raise"])
            ratios[which].append(on / off)
        for arm in ARMS:
            per_arm[arm] += got[arm]
    return {
        "library": library,
        "off_us": statistics.median(s[0] for s in per_arm["off"]) * 1e6,
        "raise_us": statistics.median(s[0] for s in per_arm["raise"]) * 1e6,
        "ratio_wall": statistics.median(ratios["wall"]),
        "ratio_cpu": statistics.median(ratios["cpu"]),
        "round_ratios_wall": ratios["wall"],  # for a confidence interval of the median
        "rounds": rounds,
    }


def instructions(library: str, url: str, n: int) -> Dict[str, float]:
    """Client instructions per GET, per arm (valgrind)."""
    import _instructions

    counts = {}
    for arm in ARMS:
        command = _command(arm, library, url, n)
        _instructions.warm(command, _env(), str(ROOT), stdin="quit\n")
        counts[arm] = _instructions.per_operation(command, n, _env(), str(ROOT))
    return counts


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
