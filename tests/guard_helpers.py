"""Helpers shared by the guard tests (``test_sqlalchemy_guard.py``, ``test_asyncpg_guard.py``,
``test_mysql_drivers.py``).

Plain functions; the fixtures they share (``mode``, ``_guard``, ``log_file``) are in
``conftest.py``.  Nothing here mocks asyncpg or the loop: each helper runs real loops against
the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import pickle
import threading
import warnings
from collections.abc import Awaitable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import asyncpg
import pytest
import structlog

import loopguard

T = TypeVar("T")

# Under pytest-xdist every record also names its worker (the documented ``worker`` field).
XDIST_FIELDS = frozenset({"worker"}) if os.environ.get("PYTEST_XDIST_WORKER") else frozenset()
XDIST_RECORD = {"worker": os.environ["PYTEST_XDIST_WORKER"]} if XDIST_FIELDS else {}


def display_path(filename: str) -> str:
    """How loopguard prints a path with no pytest rootdir set: relative to the cwd."""
    try:
        return Path(filename).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return filename


def marker_line(filename: str, marker: str) -> int:
    """The line of ``filename`` that ends with the comment ``# <marker>``."""
    for number, line in enumerate(Path(filename).read_text().splitlines(), 1):
        if line.rstrip().endswith("# " + marker):
            return number
    raise AssertionError(f"marker {marker!r} not found in {filename}")


async def backend(dsn: str, pid: int) -> Optional[dict[str, Any]]:
    """What the server reports for backend ``pid`` (asked on a separate, raw asyncpg connection)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "select state, query, query_start, state_change, backend_start "
            "from pg_stat_activity where pid = $1",
            pid,
        )
    finally:
        await conn.close()
    return dict(row) if row is not None else None


def on_new_loop(make: Callable[[], Awaitable[T]]) -> tuple[T, Any]:
    """Run one job with asyncio.run(); return its result and the (now closed) loop."""
    seen: list[Any] = []

    async def main() -> T:
        seen.append(asyncio.get_running_loop())
        return await make()

    result = asyncio.run(main())
    return result, seen[0]


def current_test_id(request: pytest.FixtureRequest) -> str:
    """PYTEST_CURRENT_TEST as loopguard reads it while the test body runs."""
    return f"{request.node.nodeid} (call)"


@contextlib.contextmanager
def silence_checked(log_file: Path) -> Iterator[None]:
    """Assert the block raises nothing, warns nothing and logs nothing (structlog and file)."""
    with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert [entry for entry in logs if entry.get("event", "").startswith("loopguard.")] == []
    assert log_file.read_text() == ""


# -- secrets ------------------------------------------------------------------------------

# A password that must never show up in anything loopguard writes.  The server trusts every
# local connection, so a wrong password still connects.  Characters that have to be encoded
# in a URL sit between two distinctive halves: a partial leak shows one of the halves.
SECRET = "s3cr3t/?#@&=+ %;PASSWORD-xyz"
_SECRET_HALVES = ("s3cr3t", "password-xyz")  # lower case: found in any case, any encoding


def assert_no_secret(texts: list[str]) -> None:
    """No text holds SECRET or a half of it: raw, percent-encoded or in another case."""
    assert texts, "nothing was written: the test checked no sink"
    for text in texts:
        for half in _SECRET_HALVES:
            assert half not in text.lower(), text


def error_texts(error: BaseException) -> list[str]:
    """Everything a LoopMismatchError shows: message, repr, record, attributes, pickle."""
    assert isinstance(error, loopguard.LoopMismatchError)
    return [
        str(error),
        repr(error),
        json.dumps(error.record),
        json.dumps({name: value for name, value in vars(error).items() if name != "record"}),
        pickle.dumps(error).decode("latin-1"),
    ]


class Written:
    """What loopguard wrote during a ``written()`` block: its warnings, structlog events
    and the lines of its JSON-lines file."""

    def __init__(self) -> None:
        self.warnings: list[warnings.WarningMessage] = []
        self.events: list[MutableMapping[str, Any]] = []
        self.file_lines: list[str] = []

    def codes(self) -> list[str]:
        """The codes of the structlog events, in order (the file has the same, checked)."""
        return [entry["code"] for entry in self.events]

    def texts(self) -> list[str]:
        return [
            *(str(w.message) for w in self.warnings),
            *(json.dumps(entry, default=str) for entry in self.events),
            *self.file_lines,
        ]


def _asyncpg_fallout(warning: warnings.WarningMessage) -> bool:
    """What asyncpg leaves behind when it fails on a foreign loop (loopguard's warn mode)."""
    return issubclass(warning.category, ResourceWarning) or "was never awaited" in str(
        warning.message
    )


@contextlib.contextmanager
def written(log_file: Path, asyncpg_fails: bool = False) -> Iterator[Written]:
    """Collect loopguard's warnings, structlog events and log-file lines in the block; any
    other warning fails the test, but for asyncpg's fallout when ``asyncpg_fails``."""
    out = Written()
    start = len(log_file.read_text().splitlines())
    with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield out
        gc.collect()
    out.warnings = [w for w in caught if issubclass(w.category, loopguard.LoopguardWarning)]
    others = [w for w in caught if w not in out.warnings]
    assert [str(w.message) for w in others if not (asyncpg_fails and _asyncpg_fallout(w))] == []
    out.events = [entry for entry in logs if entry.get("event", "").startswith("loopguard.")]
    out.file_lines = log_file.read_text().splitlines()[start:]
    assert [json.loads(line)["code"] for line in out.file_lines] == out.codes()


def install_round_trip(
    classes: tuple[type, ...], while_installed: Callable[[], object] = lambda: None
) -> list[str]:
    """The ``Class.attribute`` names of ``classes`` that ``loopguard.install()`` changes
    (from uninstalled; ``while_installed`` runs before it is undone), after asserting that
    ``uninstall()`` puts back every attribute exactly: the same objects, no more, no fewer."""

    def class_dicts() -> dict[str, dict[str, object]]:
        return {cls.__qualname__: dict(vars(cls)) for cls in classes}

    loopguard.uninstall()
    before = class_dicts()
    loopguard.install()
    during = class_dicts()
    while_installed()
    loopguard.uninstall()
    after = class_dicts()
    assert after.keys() == before.keys()
    for cls, attrs in before.items():
        assert after[cls].keys() == attrs.keys(), cls
        for name, value in attrs.items():
            assert after[cls][name] is value, f"{cls}.{name}"
    missing = object()
    return sorted(
        f"{cls}.{name}"
        for cls, attrs in during.items()
        for name, value in attrs.items()
        if before[cls].get(name, missing) is not value
    )


@contextlib.contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """A new loop running in a thread of its own; stopped, joined and closed at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@contextlib.contextmanager
def loop_kept_busy(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """``loop`` (running in another thread) stays inside one callback until the block ends:
    what other threads hand it meanwhile (call_soon_threadsafe) runs in its next iteration,
    in the order it was handed over."""
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        leave.wait(10)

    loop.call_soon_threadsafe(hold)
    assert entered.wait(10)
    try:
        yield
    finally:
        leave.set()


def dispose_as_loop_stops(engine: Any, loop: asyncio.AbstractEventLoop) -> list[Any]:
    """``await engine.dispose()`` on a new loop while ``loop`` (running in another thread) is
    held inside one callback, then ``loop`` is told to stop: whatever dispose() handed it runs
    in its very last iteration.  Returns the structlog records dispose() logged."""

    async def dispose() -> list[Any]:
        with loop_kept_busy(loop), structlog.testing.capture_logs() as logs:
            await engine.dispose()  # the loop runs what it is handed only once let go ...
            loop.call_soon_threadsafe(loop.stop)  # ... and stops right after it
        return logs

    return asyncio.run(dispose())


def warnings_at_collection() -> list[str]:
    """What a full garbage collection warns about now (an unclosed socket, transport or
    connection left for the collector): the messages, every warning recorded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(w.message) for w in caught]
