"""``track()``, ``check()`` and ``unbind()`` while loopguard is installed (``_api`` calls
these once its own cheap test of the mode has passed)."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Optional, TypeVar

from . import _context, _sites
from ._causes import likely_cause
from ._emit import raise_record, warn_record
from ._errors import LoopMismatchError
from ._loops import LoopRef, current_loop, loop_id, running_loop
from ._record import Record
from ._registry import Binding, Origin, Registry, Tracked
from ._state import STATE

LG107 = "LG107"
T = TypeVar("T")


class TrackedObject(Tracked):
    """An object registered with ``loopguard.track()`` (or first seen by ``check()``)."""

    __slots__ = ("resource", "name")

    def __init__(self, origin: Origin, resource: str, name: Optional[str]) -> None:
        super().__init__(origin)
        self.resource = resource
        self.name = name


OBJECTS: Registry[TrackedObject] = Registry("objects")
_lookup = OBJECTS.lookup


def _resource(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _creator_site(obj: Any) -> Optional[_sites.Site]:
    """The user's line that called ``track()``, or that created ``obj`` when ``track()`` is
    called from ``obj``'s own ``__init__`` (or another method of it): frames whose ``self``
    is ``obj`` are skipped, and so are loopguard's and the libraries' it knows."""
    frame: Optional[FrameType] = sys._getframe(3)
    for _ in range(_sites.MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_code.co_argcount and frame.f_locals.get("self") is obj:
            frame = frame.f_back
            continue
        if not _sites.is_internal(frame.f_code.co_filename):
            return _sites.site_of(frame, _context.rootdir)
        frame = frame.f_back
    return None


def track(obj: T, name: Optional[str]) -> T:
    loop = running_loop()
    origin = Origin(_creator_site(obj), _context.current_test(), loop is not None)
    OBJECTS.add(obj, TrackedObject(origin, _resource(obj), name))
    return obj


def check(obj: Any) -> Optional[LoopMismatchError]:
    """The error to raise in raise mode (None: nothing to raise); warn mode warns here."""
    __tracebackhide__ = True
    facts = _lookup(id(obj))
    if facts is None:  # never tracked: known from here on, creation site unknown
        facts = OBJECTS.add(
            obj, TrackedObject(Origin(None, None, None, known=False), _resource(obj), None)
        )
    binding = facts.binding
    owner = binding.loop._ref() if binding is not None else None
    loop = current_loop(owner)
    if loop is None or loop is owner:
        return None
    if binding is None:
        facts.binding = Binding(
            LoopRef(loop), _sites.user_site(_context.rootdir, skip=2), _context.current_test()
        )
        return None
    return _mismatch(facts, binding, loop)


def _mismatch(facts: TrackedObject, binding: Binding, loop: Any) -> Optional[LoopMismatchError]:
    __tracebackhide__ = True
    raising = STATE.mode == "raise"
    current = loop_id(loop)
    if not raising:
        if facts.warned_loop == current:
            return None
        facts.warned_loop = current
    used = _sites.user_site(_context.rootdir)
    used_during = _context.current_test()
    site = facts.origin.site
    record = Record(
        code=LG107,
        action="raised" if raising else "warned",
        resource=facts.resource,
        name=facts.name,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=facts.origin.created_during,
        created_by=facts.origin.fixture,
        bound_during=binding.during,
        bound_at=str(binding.site) if binding.site else None,
        used_at=str(used) if used else None,
        used_during=used_during,
        owner_loop_id=binding.loop.id,
        owner_loop_closed=binding.loop.is_closed(),
        current_loop_id=current,
        cause=likely_cause(binding.loop.state(), used_during is not None),
        owner_loop=binding.loop.describe(),
        used_site=(used.filename, used.lineno) if used else None,
        created_in_loop=facts.origin.created_in_loop,
    )
    if raising:
        return raise_record(record)
    warn_record(record, stacklevel=5)
    return None


def unbind(obj: Any) -> None:
    facts = _lookup(id(obj))
    if facts is not None:
        facts.binding = None
        facts.warned_loop = None
