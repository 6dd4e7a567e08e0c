"""The asyncio-primitives guard's (LG111) facts put into words: the record of a primitive
used on another loop, with where it was created and bound decoded from the raw captures
(``_primitive_facts``) only now, for the report.
"""

from __future__ import annotations

import dis
from types import CodeType, FrameType
from typing import Any, Optional

from .. import _context, _sites
from .._causes import likely_cause
from .._loops import LoopRef, loop_id
from .._record import Record
from . import _primitive_facts as facts  # its CREATED and BOUND: uninstall() replaces them
from ._primitive_facts import AT_CREATION, LEGACY, RESOURCES, _test_name, user_frame

LG111 = "LG111"


def describe(cls: type) -> tuple[str, Optional[str]]:
    """The resource (the asyncio class) and, for a subclass defined elsewhere, its name."""
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
    creation, binding = facts._get(facts.CREATED, obj), facts._get(facts.BOUND, obj)
    resource, name = describe(type(obj))
    created_site = created_during = created_via = in_loop = None
    if creation is not None:
        code, lasti, test, in_loop, by, outer = creation
        created_site, created_during = _site(code, lasti), _test_name(test)
        created_via = _library_line(by)
        if outer is not None:  # created by asyncio for another primitive: reported as that
            resource, name = describe(outer)
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
        created_via=created_via,
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
