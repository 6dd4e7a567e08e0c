"""What the throwaway servers (pgserver.py, redisserver.py, mysqlserver.py) share: waiting for
a started server process, stopping it, running as root, and their command line.

Each tool keeps what is its own (where the server comes from, how it starts, what "ready"
means, how to ask its version); this module has no server of its own.

Command line of every tool, through ``main()``::

    python tools/NAME.py check            # start, print the address and the server version, stop
    python tools/NAME.py run -- CMD ...   # run CMD with the tool's variable set to the
                                          # address, exit with CMD's exit code; stop after
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, ContextManager, List, Optional


def is_root() -> bool:
    """Whether this process runs as root (PostgreSQL and MariaDB refuse to, as they are)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def wait_ready(
    process: subprocess.Popen,  # type: ignore[type-arg]
    ready: Callable[[], bool],
    timeout: float,
    interval: float,
) -> str:
    """Poll ``ready()`` every ``interval`` seconds: ``"ready"`` once it says so, ``"exited"``
    when the process ends first, ``"timeout"`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if ready():
            return "ready"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(interval)
    return "exited"


def stop(process: subprocess.Popen, timeout: float) -> None:  # type: ignore[type-arg]
    """SIGTERM (the servers shut down cleanly on it), SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- command line --------------------------------------------------------------


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the with-block: the server stops


def _check(start: Callable[[], ContextManager[str]], version: Callable[[str], str]) -> int:
    t0 = time.perf_counter()
    with start() as address:
        t1 = time.perf_counter()
        print(address)
        print(version(address))
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    print(f"start {t1 - t0:.2f}s, query {t2 - t1:.2f}s, stop {t3 - t2:.2f}s", file=sys.stderr)
    return 0


def _run_with_server(
    tool: str, start: Callable[[], ContextManager[str]], env_var: str, cmd: List[str]
) -> int:
    with start() as address:
        env = dict(os.environ, **{env_var: address})
        try:
            code = subprocess.run(cmd, env=env).returncode
        except FileNotFoundError as exc:
            print(f"{tool}: {exc}", file=sys.stderr)
            code = 127
    return code if code >= 0 else 128 - code  # killed by signal N -> 128+N


def main(
    tool: str,
    start: Callable[[], ContextManager[str]],
    env_var: str,
    version: Callable[[str], str],
    argv: Optional[List[str]] = None,
) -> int:
    """``tool check`` or ``tool run -- CMD``: ``start()`` yields the server's address, which
    ``run`` exports as ``env_var``; ``version(address)`` is the line ``check`` prints."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"] and args[1:2] == ["--"]:
        del args[1]
    if not (args == ["check"] or (args[:1] == ["run"] and len(args) > 1)):
        print(f"usage: {tool} check | {tool} run -- CMD [ARGS...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        if args[0] == "check":
            return _check(start, version)
        return _run_with_server(tool, start, env_var, args[1:])
    except RuntimeError as exc:
        print(f"{tool}: {exc}", file=sys.stderr)
        return 1
