"""Instructions loopguard adds per operation, over several memory layouts, for one or more trees.

A per-operation instruction count (rows 1-3, ``_instructions.per_operation``) is exact for one
process layout, but the layout itself moves it: the same tree and worker, with only the
length of one environment variable changed, gives per-checkout counts ~1.5 k apart (objects'
addresses move, and with them dict probe sequences and the allocator's paths).  A step
smaller than that is not resolved by one count.  This script counts a row's off and raise
arms under several paddings of an unused environment variable and prints, per tree, the
added instructions for each padding, their mean and median:

    .venv/bin/python tools/pgserver.py run -- sh -c \\
        '.venv/bin/python benchmarks/layouts.py "$LOOPGUARD_TEST_DSN" 1a /tmp/old /tmp/new'

Each tree is a directory holding a ``loopguard`` package (a checkout of the repository); it
goes on the workers' ``PYTHONPATH`` as ``--loopguard-src`` does.  The rows are
``sections/timed.py``'s keys (1a, 1b, 2, 2b, 2c, 3a, 3b).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _instructions  # noqa: E402
from _env import NEUTRAL_CWD  # noqa: E402
from sections.timed import TIMED, WORKER  # noqa: E402

PAD_VARIABLE = "LOOPGUARD_BENCH_LAYOUT_PAD"  # read by nobody: it only moves the process layout
PAD_STEP = 37  # characters per padding step


def _per_operation(tree: str, arm: str, key: str, n: int, dsn: str, pad: int) -> float:
    env = dict(os.environ, PYTHONPATH=tree, **{PAD_VARIABLE: "x" * (pad * PAD_STEP)})
    cmd = [sys.executable, str(WORKER), arm, key, str(n), dsn]
    _instructions.warm(cmd, env, NEUTRAL_CWD, stdin="quit\n")
    return _instructions.per_operation(cmd, n, env, NEUTRAL_CWD)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="a libpq DSN (tools/pgserver.py run sets LOOPGUARD_TEST_DSN)")
    parser.add_argument("row", help="a key of sections/timed.py's TIMED, e.g. 1a")
    parser.add_argument("trees", nargs="+", help="directories holding a loopguard package")
    parser.add_argument("--layouts", type=int, default=5, help="paddings per tree (default 5)")
    args = parser.parse_args()
    rows = {row.key: row for row in TIMED}
    if args.row not in rows:
        parser.error(f"unknown row {args.row!r}: one of {', '.join(rows)}")
    if not _instructions.available():
        parser.error("valgrind is not on PATH")
    for tree in args.trees:
        if not (Path(tree) / "loopguard" / "__init__.py").is_file():
            parser.error(f"{tree!r} holds no loopguard package")
    n = rows[args.row].instruction_ops
    pads = range(args.layouts)
    jobs: Dict[Tuple[str, str, int], Future[float]] = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for tree in args.trees:
            for arm in ("off", "raise"):
                for pad in pads:
                    jobs[(tree, arm, pad)] = pool.submit(
                        _per_operation, tree, arm, args.row, n, args.dsn, pad
                    )
        for tree in args.trees:
            added: List[float] = [
                jobs[(tree, "raise", pad)].result() - jobs[(tree, "off", pad)].result()
                for pad in pads
            ]
            print(
                f"{args.row} {tree}: added per operation by layout "
                f"{', '.join(f'{a:+,.0f}' for a in added)}; "
                f"mean {statistics.mean(added):+,.0f}, median {statistics.median(added):+,.0f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
