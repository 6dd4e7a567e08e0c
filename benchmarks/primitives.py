#!/usr/bin/env python
"""What the asyncio-primitives guard (LG111) costs: rows for benchmarks/run.py.

    .venv/bin/python benchmarks/primitives.py            # prints the rows as a Markdown table
    .venv/bin/python benchmarks/primitives.py --quick    # a smoke run

``measure(quick)`` returns the rows as dicts (``row``, ``what``, ``off``, ``raise``,
``compare``, ``target``, ``verdict``) for the runner to add to its report:

- P1 ``asyncio.Lock()`` from the user's code: time per creation, off vs raise (target: at
  most +1 us); P1b/P1c ``asyncio.Condition()`` (it creates a Lock of its own) and
  ``asyncio.Queue()``, for information;
- P2 uncontended ``async with lock: pass`` (target: within 2 % of off);
- P3 contended acquire and release: two tasks take turns on one lock, every acquire but the
  first waits (target: at most +1 us per acquire);
- P4 off means nothing is patched: loopguard imported, not installed, asyncio's attributes
  are asyncio's own;
- P1i-P3i the same operations in instructions per operation under valgrind (noise-free;
  skipped when valgrind is not on PATH).

Timings: each round starts one worker process per arm (``off``: loopguard never imported;
``raise``: ``loopguard.install("raise")``), warms both up, then the arms take turns, one
sample each, so that load from other processes hits both alike; a cell is the median of the
samples, the comparison the median of the per-round medians of paired differences or ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

# -- the worker: one arm, samples on request -------------------------------------------------

WRAPPED_MARK = "__loopguard_wrapped__"


def _asyncio_patched() -> List[str]:
    """asyncio's primitive classes' attributes that carry loopguard's mark."""
    import asyncio
    import asyncio.locks
    import asyncio.queues

    found = []
    for module in (asyncio.locks, asyncio.queues, getattr(asyncio, "mixins", None)):
        for owner in vars(module).values() if module else ():
            if isinstance(owner, type):
                for name, value in vars(owner).items():
                    if getattr(value, WRAPPED_MARK, False) is True:
                        found.append(f"{owner.__qualname__}.{name}")
    return sorted(found)


# A library's primitive per request, as httpcore's (an anyio Event, an asyncio.Event inside)
# under the twenty-odd frames of an httpx request: written to a site-packages directory so
# that loopguard sees a library's code.
LIBRARY_SOURCE = """\
import asyncio


async def request(depth):
    if depth:
        return await request(depth - 1)
    return asyncio.Event()
"""
LIBRARY_DEPTH = 20


def _library() -> Any:
    import atexit
    import shutil
    import tempfile

    if "benchlib" in sys.modules:
        return sys.modules["benchlib"]
    top = tempfile.mkdtemp(prefix="loopguard-bench-")
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    root = Path(top) / "site-packages"
    root.mkdir()
    (root / "benchlib.py").write_text(LIBRARY_SOURCE)
    sys.path.insert(0, str(root))
    import benchlib

    return benchlib


def _operations(n: int) -> Dict[str, Any]:
    import asyncio

    lock_class, condition_class, queue_class = asyncio.Lock, asyncio.Condition, asyncio.Queue
    library = _library()

    def create_locks() -> None:
        for _ in range(n):
            lock_class()

    def create_conditions() -> None:
        for _ in range(n):
            condition_class()

    def create_queues() -> None:
        for _ in range(n):
            queue_class()

    async def uncontended(lock: Any) -> None:
        for _ in range(n):
            async with lock:
                pass

    async def contended(lock: Any) -> None:
        async def take_turns() -> None:
            for _ in range(n // 2):
                async with lock:
                    await asyncio.sleep(0)  # the other task's acquire waits meanwhile

        await asyncio.gather(take_turns(), take_turns())

    async def library_events(_: Any) -> None:
        for _ in range(n):
            await library.request(LIBRARY_DEPTH)

    async def anyio_events(_: Any) -> None:
        import anyio

        for _ in range(n):
            anyio.Event()

    return {
        "create": create_locks,
        "library_event": library_events,
        "anyio_event": anyio_events,
        "create_condition": create_conditions,
        "create_queue": create_queues,
        "uncontended": uncontended,
        "contended": contended,
    }


ASYNC_OPERATIONS = ("uncontended", "contended", "library_event", "anyio_event")


def _bytes_per_primitive(loop: Any, operations: Dict[str, Any], name: str, n: int) -> float:
    """Bytes traced per primitive kept alive: n of them made by ``name``'s way, held in a
    list (the list's own bytes are the same in both arms)."""
    import asyncio
    import tracemalloc

    kept: List[Any] = []
    if name == "library_event":
        library = sys.modules["benchlib"]

        async def make() -> None:
            for _ in range(n):
                kept.append(await library.request(LIBRARY_DEPTH))

        make_all: Any = lambda: loop.run_until_complete(make())  # noqa: E731
    else:
        lock_class = asyncio.Lock
        make_all = lambda: kept.extend(lock_class() for _ in range(n))  # noqa: E731
    kept.extend([None] * n)  # the list's capacity, before tracing
    kept.clear()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    make_all()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    kept.clear()
    return (after - before) / n


def worker(arm: str, n: int) -> int:
    """Answer ``sample OP`` with the nanoseconds of n operations, ``run OP`` with nothing
    (for instruction counts), ``quit`` to stop."""
    import asyncio
    import gc
    import time

    import anyio  # noqa: F401  (both arms import it, before loopguard)

    if arm == "raise":
        import loopguard

        loopguard.install("raise")
    else:
        assert "loopguard" not in sys.modules, "off arm: loopguard was imported"
        assert not _asyncio_patched()
    loop = asyncio.new_event_loop()
    lock = asyncio.Lock()  # bound to this loop by its first contended acquire
    operations = _operations(n)
    loop.run_until_complete(operations["contended"](lock))

    def once(name: str) -> None:
        op = operations[name]
        if name in ASYNC_OPERATIONS:
            loop.run_until_complete(op(lock))
        else:
            op()

    warm = _operations(min(n, 200))  # warm-up: caches filled, code specialised
    for name, op in warm.items():
        loop.run_until_complete(op(lock)) if name in ASYNC_OPERATIONS else op()
    # No collection during an operation: a full one falling in one arm's sample (or in one
    # of the two processes of an instruction count) would be counted as its work.
    gc.collect()
    gc.disable()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        command, _, name = line.strip().partition(" ")
        if command == "quit":
            break
        if command == "memory":
            out.write(f"{_bytes_per_primitive(loop, operations, name, n)}\n")
            continue
        if command == "sample":
            gc.collect()
        start = time.perf_counter_ns()
        once(name)
        elapsed = time.perf_counter_ns() - start
        if command == "sample":
            out.write(f"{elapsed}\n")
    loop.close()
    return 0


# -- the runner ----------------------------------------------------------------------------------


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTHONASYNC"))}
    env["PYTHONHASHSEED"] = "0"
    return env


class _Arm:
    def __init__(self, arm: str, n: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--worker", arm, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    def sample(self, op: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"sample {op}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()) / 1e9

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(30)


def _timed(op: str, n: int, rounds: int, samples: int) -> Dict[str, List[float]]:
    """Per-operation seconds of both arms, and the per-round medians of paired differences
    and ratios."""
    off: List[float] = []
    on: List[float] = []
    diffs: List[float] = []
    ratios: List[float] = []
    for number in range(rounds):
        arms = {"off": _Arm("off", n), "raise": _Arm("raise", n)}
        try:
            round_diffs, round_ratios = [], []
            for index in range(samples):
                order = ("off", "raise") if (index + number) % 2 == 0 else ("raise", "off")
                taken = {name: arms[name].sample(op) / n for name in order}
                off.append(taken["off"])
                on.append(taken["raise"])
                round_diffs.append(taken["raise"] - taken["off"])
                round_ratios.append(taken["raise"] / taken["off"])
            diffs.append(statistics.median(round_diffs))
            ratios.append(statistics.median(round_ratios))
        finally:
            for arm in arms.values():
                arm.close()
    return {"off": off, "raise": on, "diffs": diffs, "ratios": ratios}


def _instructions(op: str, n: int) -> Optional[Dict[str, float]]:
    """Instructions per operation in each arm: (3N - N) / 2N, under cachegrind."""
    import _instructions

    if not _instructions.available():
        return None
    per_op = {}
    for arm in ("off", "raise"):
        cmd = [sys.executable, str(HERE), "--worker", arm, str(n)]
        _instructions.warm(cmd, _env(), str(HERE.parent), stdin="quit\n")
        once = _instructions.count(cmd, _env(), str(HERE.parent), stdin=f"run {op}\nquit\n")
        thrice = _instructions.count(
            cmd, _env(), str(HERE.parent), stdin=f"run {op}\nrun {op}\nrun {op}\nquit\n"
        )
        per_op[arm] = (thrice - once) / (2 * n)
    return per_op


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3f} us"


def _stat(values: List[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"{_us(q[1])} [{_us(q[0])}..{_us(q[2])}]"


def _off_check() -> Dict[str, Any]:
    code = (
        f"import asyncio, json, sys; sys.path.insert(0, {str(HERE.parent)!r}); "
        "import primitives, loopguard; "
        "print(json.dumps({'installed': loopguard.is_installed(), "
        "'patched': primitives._asyncio_patched(), "
        "'lock_init': asyncio.Lock.__init__.__module__}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


ROWS = (
    # row, operation, what, target: ("diff", limit in seconds) or ("ratio", limit)
    ("P1", "create", "`asyncio.Lock()` in the user's code", ("diff", 1e-6)),
    ("P1b", "create_condition", "`asyncio.Condition()` (creates its own Lock)", None),
    ("P1c", "create_queue", "`asyncio.Queue()`", None),
    ("P2", "uncontended", "uncontended `async with lock: pass`", ("ratio", 1.02)),
    ("P3", "contended", "contended acquire + release (two tasks take turns)", ("diff", 1e-6)),
    (
        "P5",
        "library_event",
        f"`asyncio.Event()` by a library {LIBRARY_DEPTH} frames down a task (httpcore's per "
        "request)",
        None,
    ),
    ("P5b", "anyio_event", "`anyio.Event()` in a task", None),
)


def _progress(line: str) -> None:
    """Each row on stderr as soon as it is measured: a run cut short keeps what it measured."""
    print(line, file=sys.stderr, flush=True)


def _memory(arm: str, op: str, n: int) -> float:
    worker_arm = _Arm(arm, 10)
    try:
        assert worker_arm.proc.stdin is not None and worker_arm.proc.stdout is not None
        worker_arm.proc.stdin.write(f"memory {op}\n")
        worker_arm.proc.stdin.flush()
        return float(worker_arm.proc.stdout.readline())
    finally:
        worker_arm.close()


def _instructions_per_us(op: str, n: int, instructions: float) -> float:
    """This machine's rate on ``op``: the off arm's instructions per operation over its
    fastest of 7 samples (load from other processes only slows a sample down, so the rate is
    never overestimated, and a microsecond target is turned into instructions strictly)."""
    arm = _Arm("off", n)
    try:
        fastest = min(arm.sample(op) for _ in range(7)) / n
    finally:
        arm.close()
    return instructions / (fastest * 1e6)


def measure(
    quick: bool = False, timed: bool = True, only: Optional[List[str]] = None
) -> List[Dict[str, Any]]:
    """The rows, measured now (about 2 minutes; ``quick``: about 20 s; ``timed=False``: only
    the instruction counts, memory and the off check, for a busy machine; ``only``: these
    rows (P1, P2, ..., P6b) and no others)."""
    rounds, samples = (2, 5) if quick else (6, 15)
    sizes = {"create": 20_000, "create_condition": 10_000, "create_queue": 10_000}
    rows: List[Dict[str, Any]] = []
    chosen = [r for r in ROWS if only is None or r[0] in only]
    for row, op, what, target in chosen if timed else ():
        n = sizes.get(op, 20_000) // (5 if quick else 1)
        result = _timed(op, n, rounds, samples)
        diff = statistics.median(result["diffs"])
        ratio = statistics.median(result["ratios"])
        compare = f"{'+' if diff >= 0 else ''}{diff * 1e6:.3f} us per op, x{ratio:.3f}"
        verdict = None
        target_text = ""
        if target is not None:
            kind, limit = target
            if kind == "diff":
                verdict, target_text = diff <= limit, f"at most +{limit * 1e6:.0f} us"
            else:
                verdict, target_text = ratio <= limit, f"within {round((limit - 1) * 100)} %"
        _progress(
            f"{row} {what}: off {_stat(result['off'])}, raise {_stat(result['raise'])}, {compare}"
        )
        rows.append(
            {
                "row": row,
                "what": what,
                "off": _stat(result["off"]),
                "raise": _stat(result["raise"]),
                "compare": compare,
                "target": target_text,
                "verdict": verdict,
            }
        )
    for row, op, what, target in chosen:
        counted = _instructions(op, 300 if quick else 2_000)
        if counted is None:
            break
        added = counted["raise"] - counted["off"]
        ratio = counted["raise"] / counted["off"]
        verdict, target_text = None, ""
        if target is not None:
            kind, limit = target
            if kind == "diff":
                rate = _instructions_per_us(op, 2_000, counted["off"])
                most = limit * 1e6 * rate
                verdict = added <= most
                target_text = (
                    f"at most +{most:.0f} instructions (+{limit * 1e6:.0f} us at this "
                    f"machine's {rate:.0f} instructions per us)"
                )
            else:
                verdict, target_text = ratio <= limit, f"within {round((limit - 1) * 100)} %"
        _progress(f"{row}i {what}: off {counted['off']:.0f}, raise {counted['raise']:.0f}")
        rows.append(
            {
                "row": f"{row}i",
                "what": f"{what}, instructions per operation (valgrind)",
                "off": f"{counted['off']:.0f}",
                "raise": f"{counted['raise']:.0f}",
                "compare": f"{added:+.0f} instructions, x{ratio:.3f}",
                "target": target_text,
                "verdict": verdict,
            }
        )
    for row, op, what in (
        ("P6", "create", "bytes per `asyncio.Lock()` kept alive (tracemalloc)"),
        ("P6b", "library_event", "bytes per library-made `asyncio.Event()` kept alive"),
    ):
        if only is not None and row not in only:
            continue
        n = 2_000 if quick else 20_000
        off, on = _memory("off", op, n), _memory("raise", op, n)
        _progress(f"{row} {what}: off {off:.0f}, raise {on:.0f}")
        rows.append(
            {
                "row": row,
                "what": what,
                "off": f"{off:.0f} B",
                "raise": f"{on:.0f} B",
                "compare": f"{on - off:+.0f} B per primitive",
                "target": "",
                "verdict": None,
            }
        )
    if only is not None and "P4" not in only:
        return rows
    facts = _off_check()
    rows.append(
        {
            "row": "P4",
            "what": "off means nothing is patched: loopguard imported, not installed",
            "off": f"patched: {', '.join(facts['patched']) or 'nothing'}; "
            f"Lock.__init__ from {facts['lock_init']}",
            "raise": "",
            "compare": "",
            "target": "no patches when off",
            "verdict": not facts["installed"]
            and not facts["patched"]
            and facts["lock_init"] == "asyncio.locks",
        }
    )
    return rows


def rows(quick: bool = False, log: Any = None) -> List[Dict[str, Any]]:
    """Every row, for benchmarks/run.py's libraries section (L3); progress goes to stderr."""
    return measure(quick)


def table(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| # | measurement | off | raise | raise vs off | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "" if r["verdict"] is None else (" PASS" if r["verdict"] else " FAIL")
        lines.append(
            f"| {r['row']} | {r['what']} | {r['off']} | {r['raise']} | {r['compare']} | "
            f"{r['target']}{verdict} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="no timed rows: instruction counts, memory and the off check (a busy machine)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("ARM", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", type=lambda text: text.split(","), help="these rows only: P1,P5,P6,..."
    )
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]))
    rows = measure(args.quick, timed=not args.instructions, only=args.only)
    print(table(rows))
    return 0 if all(r["verdict"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
