"""Rows 6: memory (tracemalloc).

6a-c: bytes retained per tracked engine+pool, per extra AsyncEngine on a tracked pool, per
tracked connection, loopguard on minus off.  6d: 10,000 create/use/dispose cycles on fresh
event loops: traced memory and loopguard's own allocations stay flat.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from _arms import arm, new_loop
from _env import log
from _report import Row
from _stats import fmt_bytes, quartiles

import loopguard
from loopguard.integrations import _sqlalchemy as lg_sqlalchemy

from . import Context


def _lg_bytes(snapshot: tracemalloc.Snapshot) -> int:
    lg_dir = str(Path(loopguard.__file__).parent)
    filt = snapshot.filter_traces([tracemalloc.Filter(True, os.path.join(lg_dir, "*"))])
    return sum(stat.size for stat in filt.statistics("filename"))


def _settle() -> int:
    gc.collect()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _retained(
    arm_name: str, make: Callable[[asyncio.AbstractEventLoop], Any], count: int
) -> Tuple[float, float]:
    """(total bytes, bytes allocated by loopguard's code) retained per object made."""
    with arm(arm_name):
        loop = new_loop("off")
        try:
            # make(loop) returns (prepare, act, cleanup): only act's allocations count
            prepare, act, cleanup = make(loop)
            prepared = prepare()
            before = _settle()
            snap1 = tracemalloc.take_snapshot()
            kept = act(prepared)
            after = _settle()
            snap2 = tracemalloc.take_snapshot()
            lg = _lg_bytes(snap2) - _lg_bytes(snap1)
            del snap1, snap2
            cleanup(prepared, kept)
        finally:
            loop.close()
    return (after - before) / count, lg / count


def run(ctx: Context) -> None:
    report, url, quick = ctx.report, ctx.url, ctx.quick
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.util import greenlet_spawn

    n_engines, n_conns, reps = (50, 10, 2) if quick else (200, 40, 3)
    cycles, off_cycles, every = (300, 300, 100) if quick else (10000, 2000, 500)
    log(
        f"[6] memory: {n_engines} engines, {n_conns} connections, {reps} reps; "
        f"{cycles} cycles (off arm: {off_cycles})"
    )
    tracemalloc.start(1)
    try:

        def engines(loop: Any) -> Any:
            def prepare() -> Any:
                for _ in range(3):  # dialect import, caches
                    create_async_engine(url, pool_size=1)
                return None

            def act(_: Any) -> Any:
                return [create_async_engine(url, pool_size=1) for _ in range(n_engines)]

            return prepare, act, lambda p, kept: kept.clear()

        def proxies(loop: Any) -> Any:
            def prepare() -> Any:
                engine = create_async_engine(url, pool_size=1)
                engine.execution_options(isolation_level="AUTOCOMMIT")
                return engine

            def act(engine: Any) -> Any:
                return [
                    engine.execution_options(isolation_level="AUTOCOMMIT") for _ in range(n_engines)
                ]

            return prepare, act, lambda p, kept: kept.clear()

        def connections(loop: Any) -> Any:
            def prepare() -> Any:
                warm = create_async_engine(url, pool_size=1)

                async def use() -> None:
                    async with warm.connect() as conn:
                        await conn.execute(text("select 1"))
                    await warm.dispose()

                loop.run_until_complete(use())
                return create_async_engine(url, pool_size=n_conns, max_overflow=0)

            def act(engine: Any) -> Any:
                pool = engine.sync_engine.pool

                def open_all() -> None:
                    fairies = [pool.connect() for _ in range(n_conns)]
                    for fairy in fairies:
                        fairy.close()

                loop.run_until_complete(greenlet_spawn(open_all))
                assert pool.checkedin() == n_conns
                return None

            def cleanup(engine: Any, _: Any) -> None:
                loop.run_until_complete(engine.dispose())

            return prepare, act, cleanup

        for key, title, make, count, target_bytes in (
            (
                "6a",
                "retained per tracked engine+pool (create_async_engine)",
                engines,
                n_engines,
                None,
            ),
            (
                "6b",
                "retained per extra AsyncEngine on a tracked pool (execution_options)",
                proxies,
                n_engines,
                None,
            ),
            (
                "6c",
                f"retained per tracked connection ({n_conns} real connections in one pool)",
                connections,
                n_conns,
                2048,
            ),
        ):
            res: Dict[str, List[Tuple[float, float]]] = {"off": [], "raise": []}
            for rep in range(reps):
                for arm_name in ("off", "raise") if rep % 2 == 0 else ("raise", "off"):
                    res[arm_name].append(_retained(arm_name, make, count))
            totals = [r[0] - o[0] for r, o in zip(res["raise"], res["off"])]
            lg = [r[1] for r in res["raise"]]
            added = quartiles(totals)[1]
            spread = f"{fmt_bytes(min(totals))}..{fmt_bytes(max(totals))}"
            report.add(
                Row(
                    key,
                    title,
                    {
                        "off": fmt_bytes(quartiles([o[0] for o in res["off"]])[1]),
                        "raise": fmt_bytes(quartiles([r[0] for r in res["raise"]])[1]),
                    },
                    compare=f"+{fmt_bytes(added)} (range {spread}); allocated in loopguard's "
                    f"code {fmt_bytes(quartiles(lg)[1])}",
                    target="< 2 KiB" if target_bytes else "",
                    verdict=(added < target_bytes) if target_bytes else None,
                    note=f"median of {reps} alternating reps",
                )
            )

        # 6d: create/use/dispose cycles, each on a fresh event loop like a per-test loop.
        async def cycle() -> None:
            engine = create_async_engine(url, pool_size=1)
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
            await engine.dispose()

        def run_cycles(count: int) -> None:
            for _ in range(count):
                loop = new_loop("off")
                try:
                    loop.run_until_complete(cycle())
                finally:
                    loop.close()

        for arm_name in ("off", "raise"):  # warm-up, not recorded: first-use caches fill
            with arm(arm_name):
                run_cycles(every)

        def loopguard_objects() -> int:
            """Live instances of loopguard's own classes (engine/pool/connection/loop facts)."""
            count = 0
            for o in gc.get_objects():
                module = type(o).__dict__.get("__module__")
                count += isinstance(module, str) and module.startswith("loopguard.")
            return count

        not_tracemalloc = [tracemalloc.Filter(False, tracemalloc.__file__)]
        curves: Dict[str, List[Tuple[int, int, int, int, int, int]]] = {}
        first_last: Dict[str, List[tracemalloc.Snapshot]] = {}
        for arm_name, n_cycles in (("off", off_cycles), ("raise", cycles)):
            curve = []
            t0 = time.perf_counter()
            with arm(arm_name):
                for i in range(1, n_cycles + 1):
                    run_cycles(1)
                    if i % every == 0:
                        total = _settle()
                        snapshot = tracemalloc.take_snapshot().filter_traces(not_tracemalloc)
                        lg = _lg_bytes(snapshot)
                        tracked = len(lg_sqlalchemy.POOLS)
                        objects = loopguard_objects()
                        curve.append((i, total, lg, tracked, len(snapshot.traces), objects))
                        if i == every:
                            first_last[arm_name] = [snapshot]
                        elif i + every > n_cycles:
                            first_last[arm_name].append(snapshot)
                        del snapshot
                        log(
                            f"  {arm_name} cycle {i}: traced {fmt_bytes(total)} in "
                            f"{curve[-1][4]} blocks, loopguard's code {fmt_bytes(lg)}, "
                            f"tracked engines+pools {tracked}, loopguard objects {objects}"
                        )
            curves[arm_name] = curve
            log(f"  {arm_name}: {n_cycles} cycles in {time.perf_counter() - t0:.1f} s")
        # The single biggest change between the first and the last checkpoint of the on arm.
        biggest = max(
            first_last["raise"][-1].compare_to(first_last["raise"][0], "lineno"),
            key=lambda stat: stat.size_diff,
        )
        del first_last
    finally:
        tracemalloc.stop()

    def slope(curve: List[Tuple[int, ...]], index: int) -> float:
        """Least-squares growth per cycle, from the first checkpoint (after warm-up) on."""
        xs = [c[0] for c in curve]
        ys = [c[index] for c in curve]
        if len(xs) < 2:
            return 0.0
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

    on, off = curves["raise"], curves["off"]
    lg_growth = on[-1][2] - on[0][2]
    max_tracked = max(c[3] for c in on)
    objects_growth = on[-1][5] - on[0][5]
    on_blocks, off_blocks = slope(on, 4), slope(off, 4)
    # Flat: loopguard's own allocations do not grow after the first checkpoint (< 1 KiB in
    # all), no engine or pool stays tracked, no instance of loopguard's classes accumulates,
    # and the process accumulates allocated blocks no faster than with loopguard off, or
    # than not at all when the off arm happens to shrink (+1 block per 20 cycles of slack).
    # Blocks, not bytes: a container of the interpreter or of SQLAlchemy that resizes (a
    # one-off step of its high-water mark) is one block.
    flat = (
        lg_growth < 1024
        and max_tracked == 0
        and objects_growth <= 0
        and on_blocks <= max(off_blocks, 0.0) + 0.05
    )
    frame = biggest.traceback[0]
    report.add(
        Row(
            "6d",
            f"{cycles} create/use/dispose cycles (engine, real connection, SELECT 1, dispose, "
            f"fresh loop each); traced memory, checkpoint {on[0][0]} -> {on[-1][0]}",
            {
                "off": f"{fmt_bytes(off[0][1])} -> {fmt_bytes(off[-1][1])}, "
                f"{off_blocks:+.3f} blocks/cycle, {slope(off, 1):+.1f} B/cycle "
                f"({off_cycles} cycles)",
                "raise": f"{fmt_bytes(on[0][1])} -> {fmt_bytes(on[-1][1])}, "
                f"{on_blocks:+.3f} blocks/cycle, {slope(on, 1):+.1f} B/cycle",
            },
            compare=f"allocated by loopguard's code {fmt_bytes(on[0][2])} -> "
            f"{fmt_bytes(on[-1][2])}; loopguard objects {on[0][5]} -> {on[-1][5]}; "
            f"engines+pools still tracked after gc: {max_tracked}; biggest change: "
            f"{biggest.size_diff:+,} B in {biggest.count_diff:+d} blocks at "
            f"{Path(frame.filename).name}:{frame.lineno}",
            target="flat",
            verdict=flat,
        )
    )
