"""Instruction counts under valgrind: the noise-free side of the benchmarks.

Wall and CPU times on a shared 2-core machine move by several percent from one sample to
the next; the number of instructions a process executes does not (with ``PYTHONHASHSEED``
fixed, two runs of the same process differ by a few parts per million).  loopguard adds no
I/O and no waiting on the paths it guards, only client CPU work, so the ratio of client
instructions is a deterministic measure of that work.

``valgrind --tool=cachegrind --cache-sim=no`` counts every instruction the process executes
in user space (the kernel's work, such as system calls, is not counted) at about 7x the
normal run time.  Per-operation counts are differences: one process does the set-up, a
warm-up and N operations, another the same set-up and warm-up and 3N; the difference is 2N
operations and nothing else.  The operations run with the garbage collector paused (the
worker's ``run`` command): otherwise a full collection falling inside one process's run and
not the other's would be counted as millions of instructions of "work"; what loopguard's own
allocations cost the collector is part of the whole-process counts below and of the memory
rows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

VALGRIND = shutil.which("valgrind")
_I_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def available() -> bool:
    return VALGRIND is not None


def count(
    cmd: Sequence[str],
    env: Dict[str, str],
    cwd: str,
    stdin: Optional[str] = None,
) -> int:
    """Instructions executed in user space by ``cmd`` (and not by its child processes)."""
    assert VALGRIND is not None
    with tempfile.TemporaryDirectory(prefix="loopguard-bench-vg-") as tmp:
        log_file = Path(tmp) / "valgrind.log"
        proc = subprocess.run(
            [
                VALGRIND,
                "--tool=cachegrind",
                "--cache-sim=no",
                "--cachegrind-out-file=/dev/null",
                f"--log-file={log_file}",
                *cmd,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            env=dict(env, PYTHONHASHSEED="0"),
            cwd=cwd,
        )
        report = log_file.read_text() if log_file.exists() else ""
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed under valgrind (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}{report[-2000:]}"
        )
    match = _I_REFS.search(report)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's report:\n{report[-2000:]}")
    return int(match.group(1).replace(",", ""))


def per_operation(worker_cmd: List[str], n: int, env: Dict[str, str], cwd: str) -> float:
    """Instructions per operation of one benchmark worker (``_worker.py ARM KEY N DSN``)."""
    once = count(worker_cmd, env, cwd, stdin="run\nquit\n")
    thrice = count(worker_cmd, env, cwd, stdin="run\nrun\nrun\nquit\n")
    return (thrice - once) / (2 * n)


def warm(cmd: Sequence[str], env: Dict[str, str], cwd: str, stdin: Optional[str] = None) -> None:
    """Run once without valgrind so that .pyc files exist before anything is counted."""
    subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env, PYTHONHASHSEED="0"),
        cwd=cwd,
        check=False,
    )


def describe() -> str:
    if VALGRIND is None:
        return "valgrind not found"
    version = subprocess.run([VALGRIND, "--version"], capture_output=True, text=True)
    return f"{version.stdout.strip()} ({os.path.realpath(VALGRIND)})"
