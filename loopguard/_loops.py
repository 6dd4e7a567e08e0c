"""Event loops: the one loop-affinity check, stable names for loops, and what fork() changes.

Every guard asks the same question before I/O: "which loop is running, when I expect this
one?" (``current_loop``).  Everything else here serves the messages: a small number per loop
for the life of the process, names given by whoever made a loop (the pytest plugin names
pytest-asyncio's loops), and a weak reference that can say whether a loop is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import threading
import weakref
from typing import Any, Callable, Optional, Union

# asyncio._get_running_loop is the C fast path behind get_running_loop(): None instead of raising.
running_loop: Callable[[], Optional[asyncio.AbstractEventLoop]] = asyncio._get_running_loop
_thread_ident: Callable[[], int] = threading.get_ident


def current_loop(expected: Any) -> Optional[asyncio.AbstractEventLoop]:
    """The running loop (None if none runs), answered without a system call when it is
    ``expected``: a guard compares the result with ``expected``, by identity.

    On Python < 3.12 every ``asyncio._get_running_loop()`` is a ``getpid()`` system call, and
    on a hot path system calls cost more than the ~200 ns they take.  An asyncio loop records
    the thread it runs in (``_thread_id``) and only one loop runs in a thread at a time, so a
    loop running in this thread is the running loop.  uvloop's loops do not expose their
    thread: they take the lookup, which is exact.  A child forked while a loop ran inherits
    that loop with its ``_thread_id`` and this thread's ident: there the shortcut is switched
    off (``_after_fork_in_child``) and every check asks asyncio, whose answer knows the fork.

    The checks run for every statement and checkout (asyncpg's ``_check_open``,
    ``_check_conn_validity`` and ``Pool._check_init``; SQLAlchemy's ``_do_get`` and the held
    connections' hooks) have this body inline: the Python call itself is a third of the
    check's cost (~420 of ~1,270 instructions)::

        if getattr(own, "_thread_id", None) == _loops._thread_ident():
            ...  # ``own`` runs here: no mismatch
        else:
            loop = _loops.running_loop()  # then compared with ``own`` as usual

    ``_thread_ident`` read through the module at each check, never imported by name: the fork
    switch above must reach them.
    """
    if getattr(expected, "_thread_id", None) == _thread_ident():
        return expected  # type: ignore[no-any-return]
    return running_loop()


def _no_thread() -> int:
    return -1  # never a thread's ident: the shortcut above never answers


# -- loop numbers and names -----------------------------------------------------------------

# id(loop) -> its number, while the loop lives.  A plain dict read by id (loop_id() is on
# paths run for every connection and every loop close): a WeakKeyDictionary builds a weak
# reference per lookup.  The weak reference kept per loop forgets the loop's number, name and
# kind when it is collected, before its id can be reused.  Loop types without weak references
# keep their number for the life of the process.
_loop_numbers: dict[int, int] = {}
_loop_refs: dict[int, _LoopKeyRef] = {}
_number_of = _loop_numbers.get  # bound once: loop_id() runs a few times per test
_counter = itertools.count(1)
# loop number -> a name given by whoever made the loop, or the function that makes it when a
# message first asks (name_numbered_loop); an entry goes when its loop is collected.
_loop_names: dict[int, Union[str, Callable[[], str]]] = {}
# loop number -> what made it, in a word the causes read ("pytest-asyncio", "anyio-test",
# "test-client", "test-client-request"); goes with the name.
_loop_kinds: dict[int, str] = {}


class _LoopKeyRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a loop that knows the loop's id (its key above); built by weakref's
    C constructor, then given its key (no Python frame of its own)."""

    __slots__ = ("key",)
    key: int


def _forget_loop(ref: _LoopKeyRef) -> None:
    # Called while the loop is freed: its id is not reused before this runs.
    if _loop_refs.get(ref.key) is ref:
        del _loop_refs[ref.key]
        number = _loop_numbers.pop(ref.key, None)
        if number is not None:
            _loop_names.pop(number, None)
            _loop_kinds.pop(number, None)


def loop_id(loop: Any) -> int:
    """A small number naming a loop for the life of the process (numbers are never reused)."""
    known = _number_of(id(loop))
    if known is not None:
        return known
    return _number_loop(loop)


def _number_loop(loop: Any) -> int:
    key = id(loop)
    number = next(_counter)
    try:
        ref = _LoopKeyRef(loop, _forget_loop)
    except TypeError:  # no weak references: the number stays
        pass
    else:
        ref.key = key
        _loop_refs[key] = ref
    _loop_numbers[key] = number
    return number


def name_loop(loop: Any, name: str, kind: Optional[str] = None) -> None:
    """Name a loop in every message that mentions it: ``loop #3 (name)``; ``kind`` says what
    made it, for the likely cause (``_patterns``).  Both go when the loop is collected (with
    its number's entry, ``_forget_loop``)."""
    name_numbered_loop(loop_id(loop), name, kind)


def name_numbered_loop(
    key: int, name: Union[str, Callable[[], str]], kind: Optional[str] = None
) -> None:
    """``name_loop`` for a loop whose number the caller has (``loop_id``) already.  ``name``
    may be a function that makes the name: called once, when a message first needs it (the
    pytest plugin names a loop per test, and few of them are ever mentioned)."""
    _loop_names[key] = name
    if kind is None:
        _loop_kinds.pop(key, None)
    else:
        _loop_kinds[key] = kind


# Set by whoever names loops late (the pytest plugin names pytest-asyncio's loops once a
# test's setup is done): called when a message asks for a name or kind not given yet, so that
# a mismatch during the setup names a loop made in that same setup.
late_namer: Optional[Callable[[], None]] = None


def _name_late() -> None:
    if late_namer is not None:
        with contextlib.suppress(Exception):  # a message without a loop's name, not a crash
            late_namer()


def loop_name(key: int) -> str:
    """`` (name)`` for a loop number that has a name, else an empty string."""
    name = _loop_names.get(key)
    if name is None and late_namer is not None:
        _name_late()
        name = _loop_names.get(key)
    if name is not None and not isinstance(name, str):
        name = _made_name(key, name)
    return f" ({name})" if name else ""


def _made_name(key: int, make: Callable[[], str]) -> Optional[str]:
    try:
        name = make()
    except Exception:  # a message without a loop's name, not a crash
        return None
    if _loop_names.get(key) is make:
        _loop_names[key] = name
    return name


def loop_kind(key: Optional[int]) -> Optional[str]:
    """What made the loop numbered ``key`` (see ``name_loop``), if its maker said."""
    if key is None:
        return None
    kind = _loop_kinds.get(key)
    if kind is None and late_namer is not None:
        _name_late()
        kind = _loop_kinds.get(key)
    return kind


# -- fork -----------------------------------------------------------------------------------

# Numbers of the loops this process inherited through fork(): their selectors (epoll) are
# shared with the parent, so nothing here may touch them, and using what they own is a
# misuse of its own kind ("forked-child").
_inherited: set[int] = set()


def inherited(loop_number: int) -> bool:
    """The loop came from the parent process through fork()."""
    return loop_number in _inherited


_fork_listeners: list[Callable[[], None]] = []


def on_fork_in_child(listener: Callable[[], None]) -> None:
    """Call ``listener()`` in a forked child, after the inherited loops are marked."""
    if listener not in _fork_listeners:
        _fork_listeners.append(listener)


def remove_fork_listener(listener: Callable[[], None]) -> None:
    if listener in _fork_listeners:
        _fork_listeners.remove(listener)


def _after_fork_in_child() -> None:
    global _thread_ident
    loops = [loop for loop in (ref() for ref in list(_loop_refs.values())) if loop is not None]
    _inherited.update(_loop_numbers.values())  # every live loop's (and weakref-less ones')
    if any(getattr(loop, "_thread_id", None) is not None for loop in loops):
        # A loop was running at fork(): its copy claims this thread.
        _thread_ident = _no_thread
    for listener in list(_fork_listeners):
        try:
            listener()
        except Exception as exc:  # the child must start whatever loopguard's bookkeeping does
            print(f"loopguard: after fork(): {type(exc).__name__}: {exc}", file=sys.stderr)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- weak references to loops ---------------------------------------------------------------


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

    def state(self) -> str:
        """``closed`` (or collected), ``running``, ``idle``, or ``inherited`` through fork()."""
        if self.id in _inherited:
            return "inherited"
        loop = self._ref()
        if loop is None or loop.is_closed():
            return "closed"
        return "running" if loop.is_running() else "idle"

    def is_closed(self) -> bool:
        """Closed, or garbage-collected (which for a loop means it is gone for good)."""
        loop = self._ref()
        return loop is None or loop.is_closed()

    def describe(self) -> str:
        loop = self._ref()
        if loop is None:
            return f"loop #{self.id}, which has been closed and garbage-collected"
        name = f"loop #{self.id}{loop_name(self.id)}"
        if self.id in _inherited:
            return f"{name}, the parent process's, inherited through fork()"
        if loop.is_closed():
            return f"{name}, which is now closed"
        if loop.is_running():
            return f"{name}, which is still running"
        return f"{name}, which is still open but not running"

    def __repr__(self) -> str:
        return f"<LoopRef {self.describe()}>"
