"""One arm in its own worker process, answering one line per command; and the rounds in
which the off and raise workers of a library benchmark take turns.

Used by rows 1-3 (``sections/timed.py``, three arms) and by the libraries' own modules
(``http_clients.py``, ``psycopg_pool_checkout.py``: off and raise).  Their workers speak the
same protocol: ``ready`` on start, then ``sample`` (an operation batch timed: wall and CPU
seconds per operation), ``run`` (the batch untimed, for instruction counts), ``quit``.

Light on purpose: the library modules import it at the top, and their worker processes run
those modules too, so nothing here may import loopguard or the guarded libraries.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Awaitable, Callable, Dict, List, Optional, Sequence

OFF_RAISE = ("off", "raise")


def library_worker_env() -> Dict[str, str]:
    """A library worker's environment: no loopguard or asyncio debug setting inherited."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOPGUARD", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE"))
    }


class ArmProcess:
    """A worker process; its stderr is kept and shown when it fails."""

    def __init__(self, arm: str, cmd: Sequence[str], env: Dict[str, str], cwd: str) -> None:
        self.arm = arm
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=cwd,
        )

    def ask(self, command: Optional[str]) -> str:
        """Send ``command`` (None: only read) and return the answer line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            self.proc.wait(timeout=60)
            self.stderr.seek(0)
            raise RuntimeError(
                f"benchmark worker ({self.arm}) failed: {answer or 'no answer'} "
                f"(exit {self.proc.returncode})\n" + self.stderr.read()
            )
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):  # a worker that already went away
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


RoundSamples = Dict[str, List[List[float]]]  # arm -> its [wall, cpu] samples of one round


def alternating_rounds(
    command: Callable[[str], List[str]], cwd: str, rounds: int, samples: int
) -> List[RoundSamples]:
    """Each round: a fresh off and raise worker (``command(arm)``, run in ``cwd`` with
    ``library_worker_env()``), ready, then ``samples`` samples each, taking turns, who goes
    first alternating, so that a burst of load from other processes lands on both alike."""
    result = []
    for number in range(rounds):
        workers = {
            arm: ArmProcess(arm, command(arm), library_worker_env(), cwd) for arm in OFF_RAISE
        }
        try:
            for arm, worker in workers.items():
                if worker.ask(None) != "ready":
                    raise RuntimeError(f"benchmark worker ({arm}) did not answer ready")
            got: RoundSamples = {arm: [] for arm in OFF_RAISE}
            for index in range(samples):
                order = OFF_RAISE if (number + index) % 2 == 0 else OFF_RAISE[::-1]
                for arm in order:
                    got[arm].append(json.loads(workers[arm].ask("sample")))
        finally:
            for worker in workers.values():
                worker.close()
        result.append(got)
    return result


def summarize(by_round: List[RoundSamples]) -> Dict[str, object]:
    """Per arm the median microseconds per operation (wall) over all samples; per round the
    raise/off ratio of its medians (wall, CPU), and the median of those ratios."""
    from _stats import median  # pyperf: only in the driver, never in a worker

    ratios: Dict[str, List[float]] = {"wall": [], "cpu": []}
    for got in by_round:
        for which, column in (("wall", 0), ("cpu", 1)):
            off = median([s[column] for s in got["off"]])
            on = median([s[column] for s in got["raise"]])
            ratios[which].append(on / off)
    walls = {arm: [s[0] for got in by_round for s in got[arm]] for arm in OFF_RAISE}
    return {
        "off_us": median(walls["off"]) * 1e6,
        "raise_us": median(walls["raise"]) * 1e6,
        "ratio_wall": median(ratios["wall"]),
        "ratio_cpu": median(ratios["cpu"]),
        "round_ratios_wall": ratios["wall"],  # for a confidence interval of the median
        "rounds": len(by_round),
    }


async def serve(operation: Callable[[], Awaitable[object]], n: int) -> None:
    """The worker's side, on its running loop once warmed up: answer ``ready``, then each
    ``sample`` with ``[wall, cpu]`` seconds per operation (JSON) over ``n`` operations, each
    ``run`` with ``done`` after ``n`` operations with the collector paused; stop at anything
    else (``quit``, or stdin closed)."""
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "sample":
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                await operation()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(json.dumps([wall / n, cpu / n]), flush=True)
        elif command == "run":
            gc.disable()
            for _ in range(n):
                await operation()
            gc.enable()
            print("done", flush=True)
        else:
            break


def instructions_per_operation(
    command: Callable[[str], List[str]], n: int, cwd: str
) -> Dict[str, float]:
    """Client instructions per operation of each arm's worker (``command(arm)``, doing ``n``
    operations per ``run``) under valgrind, after one run without it that writes the .pyc
    files: otherwise compiling a changed module would count in one process and not the
    other (``_instructions.per_operation`` is a difference of two processes)."""
    import _instructions

    counts = {}
    for arm in OFF_RAISE:
        cmd = command(arm)
        _instructions.warm(cmd, library_worker_env(), cwd, stdin="quit\n")
        counts[arm] = _instructions.per_operation(cmd, n, library_worker_env(), cwd)
    return counts
