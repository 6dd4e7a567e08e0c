"""``loopguard run``: run a program with loopguard active, without changing its code.

``DESCRIPTION`` (the command's help) says how; it is plain text, read in a terminal.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import types
from typing import Any, Optional

from ._config import MODE_ENV, MODES
from ._errors import LoopguardError

USAGE = "loopguard run [--mode raise|warn] -- SCRIPT.py|-m MODULE|COMMAND [ARGS...]"
DESCRIPTION = """\
Run a program with loopguard active, without changing its code.

Scripts (app.py) and modules (-m pkg) run in this process after loopguard.install(), so
engines they create at import time get their creation site. Any other command is started
with LOOPGUARD set: the start-up hook (asyncio_loopguard.pth) activates loopguard in every
Python process of this environment that it starts, workers included."""
EPILOG = """\
exit status: the program's own (1 with its traceback when it raises, as with python); 2 when
there is nothing to run or the script or module cannot be found; 127 when the command cannot
be started."""


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run a script, module or command with loopguard installed",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=MODES, default="raise", help="raise (default) or warn")
    parser.add_argument(
        "target",
        nargs=argparse.REMAINDER,
        help="the script, -m module or command to run, with its arguments, after --",
    )
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
        return _run_in_process(target)
    try:
        os.execvp(target[0], target)
    except OSError as exc:
        print(f"loopguard run: cannot run {target[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    raise AssertionError("unreachable: exec replaced this process")


def _run_in_process(target: list[str]) -> int:
    """Run a script or ``-m`` module as ``__main__``.  What the program raises is reported as
    python would; a script or module that cannot be found gets a one-line error."""
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            sys.path[0] = os.getcwd()  # as python -m: modules of the current directory first
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = target
            sys.path[0] = os.path.dirname(os.path.abspath(target[0]))
            runpy.run_path(target[0], run_name="__main__")
    except Exception as exc:
        program_tb = _program_traceback(exc)
        if program_tb is None and isinstance(exc, (OSError, ImportError)):
            # runpy looking for the target: no frame of the program is in the traceback (a
            # FileNotFoundError or ImportError of the program's own keeps its traceback).
            what = f"-m {target[1]}" if target[0] == "-m" else repr(target[0])
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"loopguard run: cannot run {what}: {reason}", file=sys.stderr)
            return 2
        # As python does: the traceback from the program's first frame on, through
        # sys.excepthook (the program may have set its own), and exit status 1.
        sys.excepthook(type(exc), exc.with_traceback(program_tb), program_tb)
        return 1
    return 0


# Frames before the program's first: this module's, runpy's, and the import system's when
# it compiles a -m module.
_RUNNER_MODULES = (__name__, "runpy", "importlib._bootstrap", "importlib._bootstrap_external")


def _program_traceback(exc: BaseException) -> Optional[types.TracebackType]:
    """The traceback from the program's first frame; None if it has none."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals.get("__name__") in _RUNNER_MODULES:
        tb = tb.tb_next
    return tb
