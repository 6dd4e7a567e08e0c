"""``loopguard run``: run a program with loopguard active, without changing its code.

Scripts (``app.py``) and modules (``-m pkg``) run in this process after ``install()``, so
engines they create at import time get their creation site.  Any other command is started
with ``LOOPGUARD`` set: the start-up hook (``asyncio_loopguard.pth``) activates loopguard in
every Python process of this environment that it starts, workers included.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import Any

from ._config import MODE_ENV, MODES
from ._errors import LoopguardError

USAGE = "loopguard run [--mode raise|warn] -- SCRIPT.py|-m MODULE|COMMAND [ARGS...]"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run a script, module or command with loopguard installed",
        usage=USAGE,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=MODES, default="raise", help="raise (default) or warn")
    parser.add_argument("target", nargs=argparse.REMAINDER, help="what to run, after --")
    parser.set_defaults(run=run)


def _is_script(path: str) -> bool:
    return path.endswith(".py") or (os.path.isfile(path) and not os.access(path, os.X_OK))


def run(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[:1] == ["--"]:
        target = target[1:]
    if not target or target[:1] == ["-m"] and len(target) < 2:
        print(f"usage: {USAGE}\nloopguard run: nothing to run", file=sys.stderr)
        return 2
    # Children started by the program (workers, subprocesses) are guarded too.
    os.environ[MODE_ENV] = args.mode
    if target[0] == "-m" or _is_script(target[0]):
        from . import _activation, _autoload, _install

        _autoload.hand_over()  # LOOPGUARD set before: its start-up hook must not act as well
        try:
            _install.apply(_activation.for_run(args.mode))
        except LoopguardError as exc:  # a bad LOOPGUARD_LOG_FILE, nothing to guard
            print(f"loopguard run: {exc}", file=sys.stderr)
            return 2
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = target
            sys.path[0] = os.path.dirname(os.path.abspath(target[0]))
            runpy.run_path(target[0], run_name="__main__")
        return 0
    try:
        os.execvp(target[0], target)
    except OSError as exc:
        print(f"loopguard run: cannot run {target[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    raise AssertionError("unreachable: exec replaced this process")
