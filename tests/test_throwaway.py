"""The throwaway servers' shared machinery (tools/throwaway.py), with real processes; the
command line through redisserver.py, whose server starts fastest."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import throwaway
from redisserver import ENV_URL

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def test_wait_ready_says_ready_exited_or_timeout() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert throwaway.wait_ready(sleeper, lambda: True, 5, 0.01) == "ready"
        assert throwaway.wait_ready(sleeper, lambda: False, 0.1, 0.01) == "timeout"
    finally:
        throwaway.stop(sleeper, 5)
    assert sleeper.returncode == -15  # SIGTERM was enough
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    assert throwaway.wait_ready(done, lambda: False, 30, 0.01) == "exited"
    throwaway.stop(done, 5)  # already gone: nothing to do


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ok\n"
    throwaway.stop(stubborn, 0.2)
    stubborn.stdout.close()
    assert stubborn.returncode == -9


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_run_sets_the_variable_passes_the_exit_status_and_stops_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_URL, raising=False)
    child = f"import os, sys; print(os.environ[{ENV_URL!r}]); sys.exit(3)"
    done = subprocess.run(
        [sys.executable, str(TOOLS / "redisserver.py"), "run", "--", sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != ENV_URL},
    )
    assert done.returncode == 3, done.stderr
    url = done.stdout.strip()
    assert url.startswith("redis://127.0.0.1:")
    with pytest.raises(OSError):  # stopped once the command ended
        socket.create_connection(("127.0.0.1", _port_of(url)), timeout=1.0).close()


@pytest.mark.parametrize(
    "args", [[], ["run"], ["run", "--"], ["serve"], ["check", "extra"]], ids=repr
)
def test_bad_command_lines_print_the_usage(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(TOOLS / "redisserver.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == ("usage: redisserver.py check | redisserver.py run -- CMD [ARGS...]\n")
