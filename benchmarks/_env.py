"""The runner's process: which loopguard is measured, the environment every child gets.

Imported by ``run.py`` before anything imports loopguard: ``--loopguard-src DIR`` must be on
``sys.path`` first, and a ``LOOPGUARD`` (or asyncio debug) setting inherited from the shell
would put every arm in the same state, so the runner starts afresh without them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# Settings that would change what the arms measure; the runner sets each arm explicitly.
# PYTHONDONTWRITEBYTECODE: users run with Python's bytecode cache, and without it every
# process recompiles loopguard from source (and pytest re-rewrites its plugin's modules).
CONTROLLED_ENV = (
    "LOOPGUARD",
    "LOOPGUARD_LOG_FILE",
    "PYTHONASYNCIODEBUG",
    "PYTHONDEVMODE",
    "PYTHONDONTWRITEBYTECODE",
)


def restart_without_controlled_env() -> None:
    """Re-execute the runner without CONTROLLED_ENV (LOOPGUARD would install loopguard through
    the .pth hook as soon as SQLAlchemy is imported; PYTHONASYNCIODEBUG would put every arm in
    debug mode)."""
    if any(name in os.environ for name in CONTROLLED_ENV):
        env = {k: v for k, v in os.environ.items() if k not in CONTROLLED_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _loopguard_src(argv: List[str]) -> Optional[str]:
    """--loopguard-src DIR: measure the loopguard package in DIR (a scratch copy with a
    proposed fix) instead of the installed one; every child process gets DIR on PYTHONPATH.
    Read from argv before argparse runs: it decides what ``import loopguard`` finds."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith("--loopguard-src="):
            found = os.path.abspath(arg.split("=", 1)[1])
        elif arg == "--loopguard-src" and i + 1 < len(argv):
            found = os.path.abspath(argv[i + 1])
    return found


LOOPGUARD_SRC = _loopguard_src(sys.argv)
sys.path.insert(0, str(REPO / "tools"))
if LOOPGUARD_SRC:
    sys.path.insert(0, LOOPGUARD_SRC)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clean_env() -> Dict[str, str]:
    """The environment of every child process: no CONTROLLED_ENV, PYTHONPATH only for
    --loopguard-src."""
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED_ENV}
    env.pop("PYTHONPATH", None)
    if LOOPGUARD_SRC:
        env["PYTHONPATH"] = LOOPGUARD_SRC
    return env


# Child interpreters run in an empty directory: ``python -c`` puts the working directory first
# on sys.path, which would shadow --loopguard-src with a checkout's ./loopguard.
NEUTRAL_CWD = tempfile.mkdtemp(prefix="loopguard-bench-cwd-")
atexit.register(shutil.rmtree, NEUTRAL_CWD, True)


def python_output(code: str, env: Dict[str, str]) -> str:
    """What ``python -c code`` prints, run in a fresh interpreter in the neutral directory."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
    ).stdout


def time_process(cmd: List[str], env: Dict[str, str]) -> float:
    """Wall seconds of one process, run in the neutral directory."""
    t0 = time.perf_counter()
    subprocess.run(
        cmd,
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        cwd=NEUTRAL_CWD,
    )
    return time.perf_counter() - t0
