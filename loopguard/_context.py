"""What is running right now: the event loop, the test, and stable names for loops."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import weakref
from typing import Any, Callable, Optional

# asyncio._get_running_loop is the C fast path behind get_running_loop(): None instead of raising.
running_loop: Callable[[], Optional[asyncio.AbstractEventLoop]] = asyncio._get_running_loop
_get_ident = threading.get_ident


def foreign_running_loop(expected: Any) -> Optional[asyncio.AbstractEventLoop]:
    """The running loop when it is not ``expected``; None when ``expected`` runs, or none does.

    On Python < 3.12 every ``asyncio._get_running_loop()`` is a ``getpid()`` system call
    (its guard against a loop inherited through ``fork()``), and in a VM the system calls on
    a hot path cost more than the ~200 ns they take, in TLB refills after each.  So the
    common case is answered first without one: an asyncio loop records the thread it runs
    in (``_thread_id``), and only one loop can run in a thread at a time, so a loop running
    in this thread is the running loop.  (uvloop's loops do not expose it: they take the
    second path.)
    """
    if runs_here(expected):
        return None
    loop = running_loop()
    return None if loop is expected else loop


def runs_here(loop: Any) -> bool:
    """``loop`` is running in this thread, so it is the running loop (no system call)."""
    return getattr(loop, "_thread_id", None) == _get_ident()


_loop_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_strong_loop_ids: dict[int, int] = {}  # for loop types without weakref support
_counter = itertools.count(1)

# Set by the pytest plugin to the rootdir so paths print relative to it.
rootdir: Optional[str] = None
# Set by the pytest plugin: PYTEST_CURRENT_TEST is only meaningful in pytest's own process
# (a script started by a test inherits the variable and would blame that test).
in_pytest = False
# Set by the pytest plugin in a pytest-xdist worker: its id ("gw0"), logged with each record.
worker: Optional[str] = None


def loop_id(loop: Any) -> int:
    """A small number naming a loop for the life of the process (ids are never reused)."""
    try:
        known = _loop_ids.get(loop)
        if known is None:
            known = _loop_ids[loop] = next(_counter)
        return known
    except TypeError:
        key = id(loop)
        if key not in _strong_loop_ids:
            _strong_loop_ids[key] = next(_counter)
        return _strong_loop_ids[key]


# Names given to loops by whoever made them (the pytest plugin names pytest-asyncio's loops):
# loop id -> "pytest-asyncio's session-scoped loop"; an entry goes when its loop is collected.
_loop_names: dict[int, str] = {}


def name_loop(loop: Any, name: str) -> None:
    """Name a loop in every message that mentions it: ``loop #3 (name)``."""
    key = loop_id(loop)
    if key not in _loop_names:
        try:
            finalizer = weakref.finalize(loop, _loop_names.pop, key, None)
        except TypeError:  # no weak references: the name stays, like the loop's id
            finalizer = None
        if finalizer is not None:
            finalizer.atexit = False
    _loop_names[key] = name


def loop_name(key: int) -> str:
    """`` (name)`` for a loop id that has a name, else an empty string."""
    name = _loop_names.get(key)
    return f" ({name})" if name else ""


def current_test() -> Optional[str]:
    """The pytest node id and phase running now, e.g. ``tests/test_a.py::test_x (call)``."""
    return os.environ.get("PYTEST_CURRENT_TEST") if in_pytest else None


class LoopRef:
    """A weak reference to a loop (strong where the loop type forbids weak references)."""

    __slots__ = ("_ref", "id")

    def __init__(self, loop: Any) -> None:
        self.id = loop_id(loop)
        try:
            self._ref: Callable[[], Any] = weakref.ref(loop)
        except TypeError:
            self._ref = lambda: loop

    def __call__(self) -> Any:
        return self._ref()

    def is_closed(self) -> bool:
        """Closed, or garbage-collected (which for a loop means it is gone for good)."""
        loop = self._ref()
        return loop is None or loop.is_closed()

    def describe(self) -> str:
        loop = self._ref()
        if loop is None:
            return f"loop #{self.id}, which has been closed and garbage-collected"
        name = f"loop #{self.id}{loop_name(self.id)}"
        if loop.is_closed():
            return f"{name}, which is now closed"
        if loop.is_running():
            return f"{name}, which is still running"
        return f"{name}, which is still open but not running"

    def __repr__(self) -> str:
        return f"<LoopRef {self.describe()}>"
