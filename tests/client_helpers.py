"""Helpers shared by the HTTP client guard tests (``test_httpx_guard.py``,
``test_aiohttp_guard.py``).

The server is the real one of the ``http_url`` fixture (tools/httpserver.py): ``/hit/KEY``
counts the requests it gets for KEY and answers with the client's port (which connection the
request came on), ``/count/KEY`` says how many it got.  Nothing here mocks a client or a loop.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

_keys = itertools.count(1)


def new_key(prefix: str) -> str:
    """A key no other test counts under."""
    return f"{prefix}-{next(_keys)}"


def hits(http_url: str, key: str) -> int:
    """How many requests the server got for ``key``, asked on a connection of its own."""
    import urllib.request

    with urllib.request.urlopen(f"{http_url}/count/{key}", timeout=10) as response:
        return int(response.read())


def sdk_package(root: Path, name: str, source: str) -> ModuleType:
    """Write package ``name`` under ``root/site-packages`` (an installed library, to
    loopguard) and import it."""
    package = root / "site-packages" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source).lstrip("\n"))
    sys.path.insert(0, str(package.parent))
    try:
        __import__(name)
    finally:
        sys.path.remove(str(package.parent))
    return sys.modules[name]


@pytest.fixture
def forget_modules() -> Iterator[list[str]]:
    """Names of modules a test imports from its own files: forgotten afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)


def running_loop_thread() -> tuple[asyncio.AbstractEventLoop, object]:
    """A new loop running forever in a daemon thread; stop with ``stop_loop_thread``."""
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


def stop_loop_thread(loop: asyncio.AbstractEventLoop, thread: object) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)  # type: ignore[attr-defined]
    loop.close()


def run_script(
    source: str, tmp_path: Path, http_url: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a program of its own (``HTTP_URL`` set, no loopguard or pytest
    setting inherited; ``env`` adds more, such as ``LOOPGUARD="1"``)."""
    script = tmp_path / "jobs.py"
    script.write_text(source)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTEST_"))}
    return subprocess.run(
        [sys.executable, str(script)],
        env={**environ, "HTTP_URL": http_url, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
