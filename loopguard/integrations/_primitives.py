"""asyncio's own primitives (LG111): ``Lock``, ``Event``, ``Condition``, ``Semaphore``,
``BoundedSemaphore``, ``Queue`` (``PriorityQueue``, ``LifoQueue``) and ``Barrier``, and their
subclasses, each belong to one event loop.

- Python 3.10+: ``asyncio.mixins._LoopBoundMixin._get_loop()`` binds a primitive to the running
  loop the first time it has to wait (it needs a future of that loop), and raises
  ``RuntimeError("<...> is bound to a different event loop")`` on any other loop afterwards.
  A primitive created at import time works until two loops contend for it: the failure comes
  and goes with the timing.  ``_get_loop`` is patched: it is where every primitive is bound
  (the user's line and the test are kept) and where a use on another loop is reported, before
  asyncio's own error.  The uncontended paths (``acquire()`` of a free lock, ``release()``,
  ``set()``, ``put_nowait()``...) never call it and cost nothing more.
- Python 3.9: a primitive is bound when it is created, to ``asyncio.get_event_loop()``'s loop:
  created at import time, it belongs to a loop that ``asyncio.run()`` never runs, and its first
  wait fails with ``got Future ... attached to a different loop``.  The classes get a ``_loop``
  data descriptor whose getter, when asyncio's own waiting methods (``Lock.acquire``,
  ``Event.wait``, ``Condition.wait``, ``Semaphore.acquire``, ``Queue.get``/``put``) read the
  loop on another loop than the running one, reports it before the future is created.  The
  value stays in the instance's ``__dict__``, where asyncio put it.
- The constructors (``__init__`` of ``Lock``, ``Event``, ``Condition``, ``Semaphore``,
  ``Queue`` and ``Barrier``; ``BoundedSemaphore`` and the other queues go through their
  base's) record where each primitive was created (``_primitive_facts``: one frame look-up in
  the common case; a library's primitive is attributed to the user's line that led to it).
  The wrappers have the exact signature of asyncio's constructors: a ``*args, **kwargs``
  wrapper costs about four times as much per call.

raise mode: ``loopguard.LoopMismatchError`` where asyncio's own error would come, with the
creation site, where and during which test it was bound, the loops, the likely cause and the
fix (create the primitive inside the loop that uses it).  Nothing is raised that asyncio would
not raise: a use on a loop other than the bound one is an error for asyncio too.

warn mode: a ``LoopMismatchWarning`` (once per primitive and loop), then the primitive moves
to the running loop where that is safe: its loop is not running (closed, idle, or the parent
process's), no task of that loop is pending (a suspended task may hold the lock), and nothing
waits on it (no pending waiter future of the old loop).  Then it works on the new loop as a
primitive created there would.  Where it is not safe (its loop runs in another thread, or a
task or waiter of its loop is pending), the call goes ahead and asyncio's own error follows.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import weakref
from types import FrameType
from typing import Any, Callable, Optional

from .. import _context
from .._emit import raise_record, warn_record
from .._log import report_once
from .._loops import LoopRef, current_loop, running_loop
from .._state import STATE
from . import _primitive_facts as facts
from . import _primitive_records as records
from ._base import Integration, Patch

_getframe = sys._getframe
# The classes whose constructors are wrapped (their subclasses call them).
_CONSTRUCTED = ("locks:Lock", "locks:Event", "locks:Condition", "locks:Semaphore", "queues:Queue")


# -- constructors -----------------------------------------------------------------------------


# The constructor wrapper, compiled with the exact signature of asyncio's constructor: a
# ``*args, **kwargs`` wrapper costs as much again as everything else it does.  The two common
# cases are recorded right here, in constant time (a call to a function would cost as much as
# the recording itself):
# - the caller is the user's code (one dict look-up says so): its code object and offset;
# - the caller is a library's code while a loop runs (anyio's Event per httpx request, a
#   driver's lock per connection): the library's line and the line the task's own coroutine
#   is at, with no walk up the stack (``facts.task_line``, written out).
# Anything else (a library with no loop running, asyncio itself, a subclass's ``__init__``)
# goes to ``facts.created_elsewhere()``, which walks to the user's line.
_INIT_SOURCE = """\
def __init__({params}):
    _original({args})
    frame = _getframe(1)
    code = frame.f_code
    if type({self}) in _BASES:
        kind = _kinds_get(code.co_filename)
        if kind == _USER:
            _CREATED[_ref({self}, _forget)] = (
                code,
                frame.f_lasti,
                _env_get(_TEST_KEY) if _context.in_pytest else None,
                _running() is not None,
                None,
                None,
            )
            return
        if kind == _LIBRARY:
            loop = _running()
            if loop is not None:
                # facts.task_line(loop), written out: one Python call fewer per primitive
                task_code, task_lasti = None, _NOT_LOOKED_UP
                task = _current_tasks_get(loop)
                if task is not None:
                    task_frame = getattr(task.get_coro(), "cr_frame", None)
                    if task_frame is not None:
                        task_file = task_frame.f_code.co_filename
                        task_kind = _kinds_get(task_file)
                        if task_kind is None:
                            task_kind = _classify(task_file)
                        if task_kind == _USER:
                            task_code, task_lasti = task_frame.f_code, task_frame.f_lasti
                _CREATED[_ref({self}, _forget)] = (
                    task_code,
                    task_lasti,
                    _env_get(_TEST_KEY) if _context.in_pytest else None,
                    True,
                    (frame.f_globals.get("__name__"), code, frame.f_lasti),
                    None,
                )
                return
    _created_elsewhere({self}, frame)
"""


def _make_init(original: Callable[..., None]) -> Callable[..., None]:
    """``original`` followed by the recording of the new primitive's creation."""
    try:
        parameters = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    simple = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if not parameters or any(p.kind not in simple for p in parameters):
        return _generic_init(original)
    namespace: dict[str, Any] = {
        "_original": original,
        "_getframe": sys._getframe,
        "_kinds_get": facts._kinds.get,
        "_USER": facts._USER,
        "_LIBRARY": facts._LIBRARY,
        "_current_tasks_get": facts._current_tasks_get,
        "_classify": facts._classify,
        "_NOT_LOOKED_UP": facts.NOT_LOOKED_UP,
        "_BASES": facts.BASES,
        "_CREATED": facts.CREATED,
        "_ref": weakref.ref,
        "_forget": facts.CREATED.pop,
        "_env_get": facts._env_get,
        "_TEST_KEY": facts._TEST_KEY,
        "_context": _context,
        "_running": running_loop,
        "_created_elsewhere": facts.created_elsewhere,
    }
    head, call = [], []
    for number, parameter in enumerate(parameters):
        text = parameter.name
        if parameter.default is not parameter.empty:
            namespace[f"_default_{number}"] = parameter.default
            text += f"=_default_{number}"
        if parameter.kind is parameter.KEYWORD_ONLY:
            if "*" not in head:
                head.append("*")
            call.append(f"{parameter.name}={parameter.name}")
        else:
            call.append(parameter.name)
        head.append(text)
    self_name = parameters[0].name
    source = _INIT_SOURCE.format(params=", ".join(head), args=", ".join(call), self=self_name)
    exec(compile(source, f"<loopguard: {original.__qualname__}>", "exec"), namespace)
    facts.add_wrapper_code(namespace["__init__"].__code__)
    return namespace["__init__"]  # type: ignore[no-any-return]


def _generic_init(original: Callable[..., None]) -> Callable[..., None]:
    """For a constructor whose signature the compiled wrapper cannot copy."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        facts.created_elsewhere(self, _getframe(1))  # the walk finds the user's code as well

    return __init__


# -- binding and the check (3.10+) ----------------------------------------------------------


def _make_get_loop(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def _get_loop(self: Any) -> Any:
        __tracebackhide__ = True
        owner = self._loop
        if owner is None:  # asyncio binds it now: keep where and during which test
            loop = original(self)
            if loop is not None and STATE.mode is not None and isinstance(self, facts.GUARDED):
                facts.bound(self, _getframe(1), facts.FIRST_WAIT)
            return loop
        loop = current_loop(owner)
        if loop is not owner and loop is not None and _mismatch(self, owner, loop, _getframe(1)):
            self._loop = None  # warn mode, safe: asyncio binds it to this loop
            loop = original(self)
            facts.bound(self, _getframe(1), facts.MOVED)
            return loop
        return original(self)

    return _get_loop


# -- binding and the check (3.9) ------------------------------------------------------------


class _LoopSlot:
    """Python 3.9: ``_loop`` of a primitive class, as a data descriptor over the instance's own
    ``__dict__["_loop"]``.  Read by asyncio's waiting methods only when they must wait."""

    __loopguard_wrapped__ = True  # found by the scans for loopguard's patches

    def __init__(self, waiters: list[Any]) -> None:
        # The methods that create a future of the loop: their code, by id() (hash(code)
        # hashes all its constants); asyncio's own, alive as long as the process.
        self.waiters = frozenset(map(id, waiters))

    def __get__(self, obj: Any, cls: Optional[type] = None) -> Any:
        __tracebackhide__ = True
        try:
            owner = obj.__dict__["_loop"]
        except (AttributeError, KeyError):  # the class itself, or before __init__ set it
            raise AttributeError("_loop") from None
        loop = current_loop(owner)
        if loop is not owner and loop is not None:
            caller = _getframe(1)
            if id(caller.f_code) in self.waiters and _mismatch(obj, owner, loop, caller):
                obj.__dict__["_loop"] = owner = loop  # warn mode, safe: moved to this loop
                facts.bound(obj, caller, facts.MOVED)
        return owner

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["_loop"] = value

    def __delete__(self, obj: Any) -> None:
        del obj.__dict__["_loop"]


# -- a use on another loop --------------------------------------------------------------------


def _mismatch(obj: Any, owner: Any, loop: Any, frame: FrameType) -> bool:
    """``obj``, bound to ``owner``, is used on ``loop`` by asyncio's method in ``frame``.

    raise mode raises ``LoopMismatchError``; warn mode warns (once per primitive and loop)
    and returns True when the primitive may move to ``loop`` (the caller moves it).
    """
    __tracebackhide__ = True
    mode = STATE.mode
    if mode is None or not isinstance(obj, facts.GUARDED):
        return False
    movable = mode == "warn" and _movable(obj, owner)
    if mode == "warn" and not facts.first_warning(obj, loop):
        return movable
    try:
        action = "raised" if mode == "raise" else "warned"
        record = records.mismatch_record(
            obj, owner, loop, frame, action, healed=None if mode == "raise" else movable
        )
    except Exception as exc:  # a bug of loopguard's: asyncio's own behaviour, unchanged
        report_once("reporting an asyncio primitive used on another loop", exc, "not reported")
        return False
    if mode == "raise":
        raise raise_record(record)
    warn_record(record)
    return movable


_WAITER_LISTS = ("_waiters", "_getters", "_putters")


def _movable(obj: Any, owner: Any) -> bool:
    """Safe to move to another loop: its loop does not run, none of its tasks is pending (a
    suspended task may hold the lock, a semaphore's unit or a barrier's place: moved, the new
    loop would wait forever for a release that cannot come), and nothing waits on it."""
    if LoopRef(owner).state() == "running":
        return False
    if asyncio.all_tasks(owner):  # the tasks of ``owner`` not done yet
        return False
    for name in _WAITER_LISTS:
        waiters = getattr(obj, name, None)
        if waiters and any(not waiter.done() for waiter in waiters):
            return False
    return True


# -- the integration --------------------------------------------------------------------------


def _original(function: Any) -> Any:
    return getattr(function, "__wrapped__", function)


def _owner_inits() -> dict[Any, type]:
    """The constructors asyncio runs that create primitives of their own (a Condition's
    Lock, a Queue's Event for join(), a Barrier's Condition), by class."""
    classes = [asyncio.Condition, asyncio.Queue, getattr(asyncio, "Barrier", None)]
    return {_original(cls.__init__).__code__: cls for cls in classes if cls is not None}


def _loop_runners() -> list[Any]:
    """asyncio's functions that run a loop's callbacks and tasks (uvloop's are not Python)."""
    import asyncio.events

    functions = [
        asyncio.events.Handle._run,
        asyncio.BaseEventLoop.run_forever,
        asyncio.BaseEventLoop.run_until_complete,
        asyncio.run,
        getattr(asyncio, "Runner", None) and asyncio.Runner.run,
    ]
    return [_original(f).__code__ for f in functions if f]


def _waiting_methods() -> list[Any]:
    """Python 3.9: asyncio's methods that read ``_loop`` to wait."""
    methods = [
        asyncio.Lock.acquire,
        asyncio.Event.wait,
        asyncio.Condition.wait,
        asyncio.Semaphore.acquire,
        asyncio.Queue.get,
        asyncio.Queue.put,
    ]
    return [method.__code__ for method in methods]


def _patch_table() -> tuple[Patch, ...]:
    patches = [Patch(f"asyncio.{owner}", "__init__", _make_init) for owner in _CONSTRUCTED]
    if hasattr(asyncio, "Barrier"):  # 3.11+
        patches.append(Patch("asyncio.locks:Barrier", "__init__", _make_init))
    if not facts.LEGACY:
        patches.append(Patch("asyncio.mixins:_LoopBoundMixin", "_get_loop", _make_get_loop))
    return tuple(patches)


# Python 3.9: the classes that get the ``_loop`` descriptor (subclasses inherit it).
_SLOT_CLASSES = ("Lock", "Event", "Condition", "Semaphore", "Queue")


class AsyncioPrimitivesIntegration(Integration):
    name = "asyncio"
    module = "asyncio"
    label = "asyncio primitives"
    patches = _patch_table()

    def __init__(self) -> None:
        self._slots: list[type] = []

    def setup(self) -> None:
        facts.reset()
        facts.set_codes(_owner_inits(), _loop_runners())
        if facts.LEGACY:
            slot = _LoopSlot(_waiting_methods())
            for name in _SLOT_CLASSES:
                cls = getattr(asyncio, name)
                if "_loop" not in vars(cls):  # else not asyncio 3.9's class: left alone
                    cls._loop = slot
                    self._slots.append(cls)

    def teardown(self) -> None:
        while self._slots:
            cls = self._slots.pop()
            if isinstance(vars(cls).get("_loop"), _LoopSlot):
                delattr(cls, "_loop")
        facts.clear()

    def __repr__(self) -> str:
        return f"<AsyncioPrimitivesIntegration tracking {facts.tracked()} primitives>"
