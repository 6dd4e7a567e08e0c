"""What the asyncio-primitives guard (LG111) knows about each Lock, Event, Condition,
Semaphore, Queue and Barrier: captured raw and cheaply, put into words only for a report.

asyncio itself and the libraries create primitives all the time (SQLAlchemy's pool queue and
connection mutex, asyncpg's pool queue, psycopg's connection lock, anyio's events), so a
creation must cost next to nothing.  The constructor wrapper looks at one frame, the
constructor's caller; when that is the user's code it keeps the frame's code object and
instruction offset (the line number is decoded from them only for a report: ``f_lineno``
alone costs more than the rest of the capture), the raw ``PYTEST_CURRENT_TEST`` value (decoded
for a report too) and whether a loop is running.  Only when the caller is not the user's code
does a bounded walk go further up the stack:

- a primitive created by a library (a file in site-packages) is attributed to the user's line
  that led there (the client's constructor call, the first request that built the library's
  object), and the library's line is kept as ``created_via``: the user's line is where a fix
  goes, the library's says which object the primitive belongs to;
- a primitive asyncio creates for another one (a Condition's Lock, a Queue's Event, a
  Barrier's Condition) is reported as that one (``asyncio.Condition``, ...);
- frames of a subclass's own ``__init__`` (``self`` is the new object) are skipped: the line
  that created the object counts.

The same applies to where asyncio bound a primitive (3.10+: its first wait, on the contended
path only).  The tables are keyed by a weak reference to the primitive whose callback is the
table's own ``pop``: an entry goes when its primitive dies, with no Python code run and no
sweep.  Nothing is stored on the primitives themselves.
"""

from __future__ import annotations

import asyncio
import os
import sys
import weakref
from types import CodeType, FrameType
from typing import Any, Callable, Optional

from .. import _context, _sites
from .._log import report_once
from .._loops import loop_id, running_loop

MAX_FRAMES = 60
# With a loop running, a library's primitive is looked for the user's line this many frames
# up, no further (``_creation_walk``).
SHORT_WALK = 4
NOT_LOOKED_UP = -1  # the ``lasti`` of a creation whose user's line was not looked for
LEGACY = sys.version_info < (3, 10)  # Python 3.9: bound at construction, no _LoopBoundMixin

# How asyncio bound a primitive (``Record.origin``; the message says it in words).
FIRST_WAIT = "first-wait"  # 3.10+: the first time it had to wait (_LoopBoundMixin._get_loop)
AT_CREATION = "at-creation"  # 3.9: the constructor took asyncio.get_event_loop()'s loop
MOVED = "moved"  # warn mode moved it to the loop that used it

# asyncio's classes, most specific first where one derives from another: what records name.
_CLASS_NAMES = (
    "BoundedSemaphore",
    "Semaphore",
    "Lock",
    "Event",
    "Condition",
    "Barrier",
    "PriorityQueue",
    "LifoQueue",
    "Queue",
)
RESOURCES: dict[type, str] = {
    getattr(asyncio, name): f"asyncio.{name}" for name in _CLASS_NAMES if hasattr(asyncio, name)
}
BASES = frozenset(RESOURCES)  # asyncio's own classes, not subclasses defined elsewhere
# The classes guarded: theirs and their subclasses' instances (LEGACY has no Barrier).
GUARDED = tuple(
    cls
    for cls in RESOURCES
    if cls.__name__ in ("Lock", "Event", "Condition", "Semaphore", "Queue", "Barrier")
)

_getframe = sys._getframe
_weakref = weakref.ref
try:  # the tasks running now, by loop: asyncio's own table (C or Python), 3.9 to 3.13
    import asyncio.tasks

    _current_tasks_get: Callable[[Any], Any] = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
except AttributeError:  # a later Python: the public function
    _current_tasks_get = asyncio.current_task

# -- the raw PYTEST_CURRENT_TEST -------------------------------------------------------------
# os.environ.get() encodes the key and decodes the value (~0.4 us); the mapping behind it
# holds the encoded value, read with one dict lookup and decoded only for a report.
_environ: Any = os.environ
try:
    _env_get: Callable[[Any], Any] = _environ._data.get
    _TEST_KEY: Any = _environ.encodekey("PYTEST_CURRENT_TEST")
    _decode: Callable[[Any], str] = _environ.decodevalue
except AttributeError:  # not CPython's os._Environ
    _env_get, _TEST_KEY, _decode = os.environ.get, "PYTEST_CURRENT_TEST", str


def _test_now() -> Any:
    return _env_get(_TEST_KEY) if _context.in_pytest else None


def _test_name(raw: Any) -> Optional[str]:
    return None if raw is None else _decode(raw)


# -- whose code a frame runs ------------------------------------------------------------------

_OTHER, _USER, _LIBRARY = 0, 1, 2
_kinds: dict[str, int] = {}  # filename -> _USER, _LIBRARY (site-packages) or _OTHER
_LOOPGUARD_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_LIBRARY_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
_stdlib: tuple[str, ...] = ()


def _classify(filename: str) -> int:
    # Not _sites.is_internal(): that computes its list of libraries once, on first use, and
    # primitives are created long before SQLAlchemy or asyncpg may be imported.
    global _stdlib
    if not _stdlib:
        _stdlib = _sites._stdlib_and_site_packages()[0]
    if filename.startswith(_LOOPGUARD_DIR):
        kind = _OTHER
    elif any(part in filename for part in _LIBRARY_DIRS):
        kind = _LIBRARY
    elif filename.startswith("<") or filename.startswith(_stdlib):  # asyncio, "<frozen ...>"
        kind = _OTHER
    else:
        kind = _USER
    _kinds[filename] = kind
    return kind


def _is_method_of(frame: FrameType, obj: Any) -> bool:
    """``frame`` runs a method of ``obj`` (a subclass's ``__init__`` calling ``super()``)."""
    code = frame.f_code
    return bool(code.co_argcount) and frame.f_locals.get(code.co_varnames[0]) is obj


def _next_frame(frame: FrameType, hopped: bool) -> tuple[Optional[FrameType], bool]:
    """The calling frame; at the top of a greenlet (SQLAlchemy's bridge), its parent's."""
    back = frame.f_back
    if back is None and not hopped:
        return _sites._parent_greenlet_frame(), True
    return back, hopped


def _creation_walk(frame: Optional[FrameType], obj: Any, in_loop: bool) -> tuple[Any, ...]:
    """The creation facts when the constructor's caller is not simply the user's code.

    With a loop running, the walk stops after ``SHORT_WALK`` frames (the constructor
    wrappers record a library's primitive made in a task without any walk; what comes here is
    asyncio's own, a Condition's Lock made for a library, or a subclass's): the user's line
    is then the line the task's own coroutine is at (``task_line``), if that is the user's
    code; else it is not known (``lasti`` NOT_LOOKED_UP), and the report says so.
    """
    by: Optional[tuple[str, CodeType, int]] = None
    owner: Optional[type] = None  # the class asyncio creates it for (a Condition's Lock)
    owner_frame: Optional[FrameType] = None
    subclassed = type(obj) not in BASES
    hopped = False
    for _ in range(SHORT_WALK if in_loop else MAX_FRAMES):
        if frame is None or id(frame.f_code) in _loop_runners:
            break
        code = frame.f_code
        kind = _kinds.get(code.co_filename)
        if kind is None:
            kind = _classify(code.co_filename)
        if id(code) in _owner_inits:
            owner, owner_frame = _owner_inits[id(code)], frame  # the outermost one wins
        elif subclassed and _is_method_of(frame, obj):
            pass  # a subclass's own __init__: the line that created the object counts
        elif kind == _USER:
            if owner_frame is not None and code.co_name == "__init__":
                outer = owner_frame.f_locals.get("self")  # f_locals: only in this rare case
                if _is_method_of(frame, outer):
                    owner = type(outer)  # a subclass of Condition, calling super().__init__()
                    frame, hopped = _next_frame(frame, hopped)
                    continue
            return (code, frame.f_lasti, _test_now(), in_loop, by, owner)
        elif kind == _LIBRARY and by is None:
            by = (str(frame.f_globals.get("__name__")), code, frame.f_lasti)
        frame, hopped = _next_frame(frame, hopped)
    else:
        loop = running_loop() if in_loop else None
        if loop is not None:  # cut short: the task's own line, or not looked up
            return (*task_line(loop), _test_now(), in_loop, by, owner)
    return (None, 0, _test_now(), in_loop, by, owner)


def task_line(loop: Any) -> tuple[Optional[CodeType], int]:
    """The line the task running on ``loop`` (this thread's running loop) is at in its own
    coroutine, if that is the user's code (the ``await`` that led into a library's code);
    else (None, NOT_LOOKED_UP).  A dict look-up, not ``asyncio.current_task()`` (on Python
    < 3.12 that asks for the running loop again: a getpid() system call)."""
    task = _current_tasks_get(loop)
    coro = task.get_coro() if task is not None else None
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        code = frame.f_code
        kind = _kinds.get(code.co_filename)
        if kind is None:
            kind = _classify(code.co_filename)
        if kind == _USER:
            return code, frame.f_lasti
    return None, NOT_LOOKED_UP


def user_frame(frame: Optional[FrameType]) -> Optional[FrameType]:
    """The first frame of the user's code from ``frame`` up (libraries and asyncio skipped),
    within the task: not the line that runs the event loop."""
    hopped = False
    for _ in range(MAX_FRAMES):
        if frame is None or id(frame.f_code) in _loop_runners:
            return None
        kind = _kinds.get(frame.f_code.co_filename)
        if kind is None:
            kind = _classify(frame.f_code.co_filename)
        if kind == _USER:
            return frame
        frame, hopped = _next_frame(frame, hopped)
    return None


# -- the tables -------------------------------------------------------------------------------
# Keyed by a weak reference to the primitive whose callback is the table's own ``pop`` (a C
# function: no Python code runs when a primitive dies, and no sweep is needed).  A look-up
# uses ``weakref.ref(obj)``, which equals that key while the primitive lives.
#
# CREATED: (code, lasti, raw test, loop running?, library, owner) where the primitive was
#   created; ``library``: (module, code, lasti) of the library code that created it, or None;
#   ``owner``: the class of the primitive asyncio created it for (a Condition's Lock), or None.
# BOUND: (code, lasti, raw test, how) where asyncio bound it (FIRST_WAIT) or warn mode moved
#   it (MOVED); absent: at creation (3.9) or before install().
# WARNED: warn mode, the loops it was reported on.
CREATED: dict[Any, tuple[Any, ...]] = {}
BOUND: dict[Any, tuple[Any, ...]] = {}
WARNED: dict[Any, set[int]] = {}
# Code objects are compared by id(): hash(code) hashes its constants, nested code included.
# id(constructor code) -> the class of asyncio's that creates primitives of its own there.
_owner_inits: dict[int, type] = {}
# Where a task's frames end: the event loop running callbacks.  A walk that reaches them has
# found no user code in the task (a task running asyncio's own coroutine, barrier.wait()).
_loop_runners: frozenset[int] = frozenset()


# id(code) -> code of loopguard's constructor wrappers (``_primitives``), kept alive so an id
# is never another code object's.
_wrapper_codes: dict[int, CodeType] = {}


def add_wrapper_code(code: CodeType) -> None:
    """A constructor wrapper's code: a frame running it is loopguard's, between asyncio's
    constructor and its caller."""
    _wrapper_codes[id(code)] = code


def _store(table: dict[Any, Any], obj: Any, value: Any) -> None:
    """``table[obj] = value``; an existing key is kept (with its callback)."""
    table[_weakref(obj, table.pop)] = value


def _keyable(cls: Any) -> bool:
    """Instances hash and compare by identity: a weak reference to one can be a key."""
    return cls.__hash__ is object.__hash__ and cls.__eq__ is object.__eq__


def created_elsewhere(obj: Any, frame: FrameType) -> None:
    """The constructor's caller (``frame``) is not simply the user's code: a library, asyncio
    (a Condition's own Lock), a subclass's ``__init__``.  Called by the constructor wrappers
    (``_primitives``)."""
    try:
        owner = _owner_inits.get(id(frame.f_code))
        if owner is not None and type(obj) in BASES:
            # asyncio's Condition/Queue/Barrier creating it for itself, called by its wrapper
            # (``_primitives``), called by...: the user's code, most of the time.
            caller = frame.f_back.f_back if frame.f_back is not None else None
            if caller is not None:
                caller_kind = _kinds.get(caller.f_code.co_filename)
                if caller_kind == _USER:
                    test, in_loop = _test_now(), running_loop() is not None
                    creation = (caller.f_code, caller.f_lasti, test, in_loop, None, owner)
                    _store(CREATED, obj, creation)
                    return
                if caller_kind == _LIBRARY:
                    # A library's Queue made in a task (SQLAlchemy's pool queue, per pool):
                    # what the short walk finds, without the walk.
                    found = _library_owner_creation(frame.f_back, caller, owner)
                    if found is not None:
                        table = CREATED
                        table[_weakref(obj, table.pop)] = found
                        return
        if type(obj) not in BASES and not _keyable(type(obj)):
            return  # a subclass with an equality of its own cannot key the table: untracked
        _store(CREATED, obj, _creation_walk(frame, obj, running_loop() is not None))
    except Exception as exc:  # never fail the user's asyncio.Lock()
        report_once("recording where an asyncio primitive was created", exc, "it goes untracked")


def _library_owner_creation(
    wrapper: Optional[FrameType], caller: FrameType, owner: type
) -> Optional[tuple[Any, ...]]:
    """``_creation_walk``'s result, found without it, for the common case of a primitive that
    asyncio's ``owner`` (a Queue's Event) makes for a library in a running task: the
    ``SHORT_WALK`` frames are asyncio's constructor, loopguard's constructor ``wrapper``, the
    library's ``caller`` and a library's frame above it, so the walk would keep the caller as
    ``created_via`` and end at the task's own line.  None when the frames are anything else:
    the walk decides."""
    above = caller.f_back
    # (a wrapper of loopguard's is neither the user's, a library's, an asyncio constructor's
    # nor a loop runner's code: the walk would pass it by)
    if (
        SHORT_WALK != 4
        or wrapper is None
        or above is None
        or id(wrapper.f_code) not in _wrapper_codes
        or _kinds.get(above.f_code.co_filename) != _LIBRARY
    ):
        return None
    loop = running_loop()
    if loop is None:
        return None
    by = (str(caller.f_globals.get("__name__")), caller.f_code, caller.f_lasti)
    # task_line(loop) and _test_now(), written out: once per pool, two Python calls fewer
    code, lasti = None, NOT_LOOKED_UP
    task = _current_tasks_get(loop)
    task_frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    if task_frame is not None:
        task_file = task_frame.f_code.co_filename
        kind = _kinds.get(task_file)
        if (_classify(task_file) if kind is None else kind) == _USER:
            code, lasti = task_frame.f_code, task_frame.f_lasti
    test = _env_get(_TEST_KEY) if _context.in_pytest else None
    return (code, lasti, test, True, by, owner)


def _get(table: dict[Any, Any], obj: Any) -> Any:
    cls = type(obj)
    return table.get(_weakref(obj)) if cls in BASES or _keyable(cls) else None


def bound(obj: Any, frame: Optional[FrameType], how: str) -> None:
    """asyncio bound ``obj`` to the running loop (``how``) while ``frame`` (asyncio's method
    that needed the loop) ran: keep the user's line and the test."""
    try:
        if _keyable(type(obj)):
            found = user_frame(frame)
            spot = (found.f_code, found.f_lasti) if found is not None else (None, 0)
            _store(BOUND, obj, (*spot, _test_now(), how))
    except Exception as exc:  # never fail asyncio's own call
        report_once("recording where an asyncio primitive was bound", exc, "it is not said")


def first_warning(obj: Any, loop: Any) -> bool:
    """Warn mode: True the first time ``obj`` is reported on ``loop``."""
    if not _keyable(type(obj)):
        return True
    warned = WARNED.get(_weakref(obj))
    if warned is None:
        warned = set()
        _store(WARNED, obj, warned)
    number = loop_id(loop)
    if number in warned:
        return False
    warned.add(number)
    return True


def set_codes(owner_inits: dict[CodeType, type], loop_runners: list[CodeType]) -> None:
    """The code of asyncio's constructors that create primitives of their own (and their
    classes), and of the event loop's methods that run tasks (asyncio's code, which lives as
    long as the process)."""
    global _owner_inits, _loop_runners
    _owner_inits = {id(code): cls for code, cls in owner_inits.items()}
    _loop_runners = frozenset(map(id, loop_runners))


def reset() -> None:
    """install(): files are classified afresh (libraries may have been installed since)."""
    _kinds.clear()


def clear() -> None:
    """uninstall(): forget every primitive.  New tables: the old ones empty themselves as their
    primitives die (their keys' callbacks are the old tables' ``pop``)."""
    global CREATED, BOUND, WARNED
    CREATED, BOUND, WARNED = {}, {}, {}
    _wrapper_codes.clear()


def tracked() -> int:
    """How many live primitives have a creation site."""
    return len(CREATED)
