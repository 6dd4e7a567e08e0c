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
  object), and the library's line is kept as ``created_by``: the user's line is where a fix
  goes, the library's says which object the primitive belongs to;
- a primitive asyncio creates for another one (a Condition's Lock, a Queue's Event, a
  Barrier's Condition) is reported as that one (``asyncio.Condition``, ...);
- frames of a subclass's own ``__init__`` (``self`` is the new object) are skipped: the line
  that created the object counts.

The same applies to where asyncio bound a primitive (3.10+: its first wait, on the contended
path only).  Entries are keyed by ``id()`` and hold a weak reference without a callback; the
entries of dead primitives are swept whenever the table has doubled since the last sweep
(constant amortised time, memory bounded by twice the live primitives).  Nothing is stored on
the primitives themselves.
"""

from __future__ import annotations

import asyncio
import dis
import os
import sys
import weakref
from types import CodeType, FrameType
from typing import Any, Callable, Optional

from .. import _context, _sites
from .._causes import likely_cause
from .._log import report_once
from .._loops import LoopRef, loop_id, running_loop
from .._record import Record

LG111 = "LG111"
MAX_FRAMES = 60
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


def _is_method_of(frame: FrameType, objects: list[Any]) -> bool:
    """``frame`` runs a method of one of ``objects`` (a subclass's ``__init__`` calling
    ``super().__init__()``)."""
    code = frame.f_code
    if not code.co_argcount:
        return False
    first = frame.f_locals.get(code.co_varnames[0])
    return any(first is obj for obj in objects)


def _next_frame(frame: FrameType, hopped: bool) -> tuple[Optional[FrameType], bool]:
    """The calling frame; at the top of a greenlet (SQLAlchemy's bridge), its parent's."""
    back = frame.f_back
    if back is None and not hopped:
        return _sites._parent_greenlet_frame(), True
    return back, hopped


def _creation_walk(
    frame: Optional[FrameType], obj: Any, owner_inits: frozenset[CodeType]
) -> tuple[Any, ...]:
    """The creation facts when the constructor's caller is not simply the user's code."""
    by: Optional[tuple[str, CodeType, int]] = None
    owner: Optional[tuple[str, Optional[str]]] = None
    selves = [obj]  # the new primitive, and the one asyncio creates it for
    subclassed = type(obj) not in BASES
    hopped = False
    for _ in range(MAX_FRAMES):
        if frame is None or frame.f_code in _loop_runners:
            break
        code = frame.f_code
        kind = _kinds.get(code.co_filename)
        if kind is None:
            kind = _classify(code.co_filename)
        if code in owner_inits:  # asyncio's Condition/Queue/Barrier creating it for itself
            outer = frame.f_locals.get("self")
            if isinstance(outer, GUARDED) and outer is not obj:
                owner = describe(outer)  # the outermost one wins: a Barrier's Condition's Lock
                selves.append(outer)
                subclassed = subclassed or type(outer) not in BASES
        elif subclassed and _is_method_of(frame, selves):
            pass  # a subclass's own __init__: the line that created the object counts
        elif kind == _USER:
            return (code, frame.f_lasti, _test_now(), running_loop() is not None, by, owner)
        elif kind == _LIBRARY and by is None:
            by = (str(frame.f_globals.get("__name__")), code, frame.f_lasti)
        frame, hopped = _next_frame(frame, hopped)
    return (None, 0, _test_now(), running_loop() is not None, by, owner)


def user_frame(frame: Optional[FrameType]) -> Optional[FrameType]:
    """The first frame of the user's code from ``frame`` up (libraries and asyncio skipped),
    within the task: not the line that runs the event loop."""
    hopped = False
    for _ in range(MAX_FRAMES):
        if frame is None or frame.f_code in _loop_runners:
            return None
        kind = _kinds.get(frame.f_code.co_filename)
        if kind is None:
            kind = _classify(frame.f_code.co_filename)
        if kind == _USER:
            return frame
        frame, hopped = _next_frame(frame, hopped)
    return None


# -- the table --------------------------------------------------------------------------------

# id(primitive) -> [weak reference, creation, binding, loops warned about]
#   creation: (code, lasti, raw test, loop running?, (module, code, lasti) of the library
#              that created it or None, (resource, name) of the primitive it belongs to or None)
#   binding:  (code, lasti, raw test, how) where asyncio bound it (FIRST_WAIT) or warn mode
#             moved it (MOVED); None: at creation (3.9) or unknown (before install()).
_REF, _CREATED, _BOUND, _WARNED = range(4)
_MIN_SWEEP = 1024
_entries: dict[int, list[Any]] = {}
_sweep_at = _MIN_SWEEP
_owner_inits: frozenset[CodeType] = frozenset()
# Where a task's frames end: the event loop running callbacks.  A walk that reaches them has
# found no user code in the task (a task running asyncio's own coroutine, barrier.wait()).
_loop_runners: frozenset[CodeType] = frozenset()


def _sweep() -> None:
    """Forget the primitives that have been collected."""
    global _sweep_at
    for key, entry in list(_entries.items()):
        if entry[_REF]() is None and _entries.get(key) is entry:
            del _entries[key]
    _sweep_at = max(_MIN_SWEEP, 2 * len(_entries))


def created(obj: Any) -> None:
    """Record where ``obj`` is being created; called by the constructor wrappers, whose
    caller is frame 2."""
    try:
        _created(obj, _getframe(2))
    except Exception as exc:  # never fail the user's asyncio.Lock()
        report_once("recording where an asyncio primitive was created", exc, "it goes untracked")


def _created(obj: Any, frame: FrameType) -> None:
    code = frame.f_code
    if _kinds.get(code.co_filename) == _USER and type(obj) in BASES:
        creation: tuple[Any, ...] = (
            code,
            frame.f_lasti,
            _env_get(_TEST_KEY) if _context.in_pytest else None,
            running_loop() is not None,
            None,
            None,
        )
    else:
        creation = _creation_walk(frame, obj, _owner_inits)
    _entries[id(obj)] = [_weakref(obj), creation, None, None]
    if len(_entries) > _sweep_at:
        _sweep()


def _entry(obj: Any) -> list[Any]:
    """``obj``'s entry; one without a creation site if it was created before install()."""
    key = id(obj)
    entry = _entries.get(key)
    if entry is None or entry[_REF]() is not obj:
        entry = _entries[key] = [_weakref(obj), None, None, None]
    return entry


def bound(obj: Any, frame: Optional[FrameType], how: str) -> None:
    """asyncio bound ``obj`` to the running loop (``how``) while ``frame`` (asyncio's method
    that needed the loop) ran: keep the user's line and the test."""
    found = user_frame(frame)
    spot = (found.f_code, found.f_lasti) if found is not None else (None, 0)
    _entry(obj)[_BOUND] = (*spot, _test_now(), how)


def first_warning(obj: Any, loop: Any) -> bool:
    """Warn mode: True the first time ``obj`` is reported on ``loop``."""
    entry = _entry(obj)
    warned = entry[_WARNED]
    if warned is None:
        warned = entry[_WARNED] = set()
    number = loop_id(loop)
    if number in warned:
        return False
    warned.add(number)
    return True


def set_codes(owner_inits: frozenset[CodeType], loop_runners: frozenset[CodeType]) -> None:
    """The code of asyncio's constructors that create primitives of their own, and of the
    event loop's methods that run tasks."""
    global _owner_inits, _loop_runners
    _owner_inits, _loop_runners = owner_inits, loop_runners


def clear() -> None:
    """Forget everything (install() starts afresh: libraries may have been imported since)."""
    global _sweep_at
    _entries.clear()
    _kinds.clear()
    _sweep_at = _MIN_SWEEP


def tracked() -> int:
    """How many live primitives have an entry."""
    return sum(1 for entry in list(_entries.values()) if entry[_REF]() is not None)


# -- words, for a report ----------------------------------------------------------------------


def describe(obj: Any) -> tuple[str, Optional[str]]:
    """The resource (the asyncio class) and, for a subclass defined elsewhere, its name."""
    cls = type(obj)
    base = next((c for c in cls.__mro__ if c in RESOURCES), None)
    if base is None:
        return f"{cls.__module__}.{cls.__qualname__}", None
    name = None if cls is base else f"{cls.__module__}.{cls.__qualname__}"
    return RESOURCES[base], name


def _line(code: CodeType, lasti: int) -> int:
    """The line of ``code`` that the instruction at byte offset ``lasti`` belongs to."""
    line = code.co_firstlineno
    if LEGACY:
        for offset, start_line in dis.findlinestarts(code):
            if offset > lasti:
                break
            line = start_line or line
        return line
    for start, end, number in code.co_lines():
        if number is not None and start <= lasti:
            line = number
        if start <= lasti < end:
            break
    return line


def _site(code: Optional[CodeType], lasti: int) -> Optional[_sites.Site]:
    if code is None:
        return None
    path = _sites.display_path(code.co_filename, _context.rootdir)
    return _sites.Site(path, _line(code, lasti), code.co_name, code.co_filename)


def _library_line(by: Optional[tuple[str, CodeType, int]]) -> Optional[str]:
    """``module:line in function`` of the library code that created the primitive."""
    if by is None:
        return None
    module, code, lasti = by
    return f"{module}:{_line(code, lasti)} in {getattr(code, 'co_qualname', code.co_name)}"


def operation(obj: Any, frame: FrameType) -> str:
    """``Lock.acquire``, ``Queue.get``, ...: the asyncio method running in ``frame``."""
    code = frame.f_code
    for cls in type(obj).__mro__:
        function = cls.__dict__.get(code.co_name)
        if getattr(function, "__code__", None) is code:
            return f"{cls.__name__}.{code.co_name}"
    return code.co_name


def mismatch_record(
    obj: Any, owner: Any, loop: Any, frame: FrameType, action: str, healed: Optional[bool] = None
) -> Record:
    """The record of ``obj``, bound to ``owner``, used on ``loop`` by asyncio's method running
    in ``frame``."""
    entry = _entry(obj)
    creation = entry[_CREATED]
    binding = entry[_BOUND]
    resource, name = describe(obj)
    created_site = created_during = created_by = in_loop = None
    if creation is not None:
        code, lasti, test, in_loop, by, inner_of = creation
        created_site, created_during = _site(code, lasti), _test_name(test)
        created_by = _library_line(by)
        if inner_of is not None:
            resource, name = inner_of
    how: Optional[str] = None
    bound_site = bound_during = None
    if binding is not None:
        code, lasti, test, how = binding
        bound_site, bound_during = _site(code, lasti), _test_name(test)
    elif LEGACY and creation is not None:
        how, bound_site, bound_during = AT_CREATION, created_site, created_during
    owner_ref = LoopRef(owner)
    used = user_frame(frame)
    used_site = _sites.site_of(used, _context.rootdir) if used is not None else None
    # The warning points at the user's line, or else at asyncio's method, never at loopguard.
    warn_at = used_site or _sites.site_of(frame, _context.rootdir)
    used_during = _context.current_test()
    if how == AT_CREATION and in_loop is False:
        cause = "outside-loop"
    else:
        cause = likely_cause(owner_ref.state(), used_during is not None)
    return Record(
        code=LG111,
        action=action,
        resource=resource,
        name=name,
        operation=operation(obj, frame),
        created_at=created_site.location if created_site else None,
        created_in=created_site.function if created_site else None,
        created_during=created_during,
        created_by=created_by,
        bound_during=bound_during,
        bound_at=str(bound_site) if bound_site else None,
        used_at=str(used_site) if used_site else None,
        used_during=used_during,
        owner_loop_id=owner_ref.id,
        owner_loop_closed=owner_ref.is_closed(),
        current_loop_id=loop_id(loop),
        cause=cause,
        healed=healed,
        owner_loop=owner_ref.describe(),
        used_site=(warn_at.filename, warn_at.lineno),
        created_in_loop=in_loop,
        origin=how,
    )
