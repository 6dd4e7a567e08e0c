"""What the HTTP client guards (httpx, aiohttp) share: the user's line behind a client, the
library that built it, and the record of a misuse.

A client is often built by another library: ``openai.AsyncOpenAI(...)`` builds an
``httpx.AsyncClient`` in its ``__init__``.  The line worth showing is the user's, the one that
created the SDK client, so every frame of an installed package (``_sites.is_library``) is
skipped on the way there, and the outermost of them that belongs to an object (or, failing
that, a function) names the library that built the client.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any, Optional

from .. import _context, _sites
from .._causes import likely_cause
from .._loops import LoopRef, loop_id, running_loop
from .._record import Record
from .._registry import Binding, Origin, Tracked


class ClientFacts(Tracked):
    """One client (an httpx connection pool, an aiohttp session): its origin and binding, its
    base URL without secrets, and the library class that built it, if another library did."""

    __slots__ = ("url", "builder")

    def __init__(self, origin: Origin, url: Optional[str], builder: Optional[str]) -> None:
        super().__init__(origin)
        self.url = url
        self.builder = builder


def _public_name(cls: type) -> str:
    """``openai.AsyncOpenAI`` for ``openai._client.AsyncOpenAI`` when the package exports it."""
    module = cls.__module__ or ""
    top = module.partition(".")[0]
    if getattr(sys.modules.get(top), cls.__qualname__, None) is cls:
        return f"{top}.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"


def _builder_of(frame: FrameType) -> Optional[str]:
    """The class of the frame's ``self`` (or its function) in a library's frame."""
    code = frame.f_code
    if code.co_argcount and code.co_varnames[0] in ("self", "cls"):
        owner = frame.f_locals.get(code.co_varnames[0])
        if owner is not None:
            return _public_name(owner if isinstance(owner, type) else type(owner))
    module = frame.f_globals.get("__name__")
    if not isinstance(module, str) or code.co_name.startswith("<"):
        return None
    return f"{module}.{getattr(code, 'co_qualname', code.co_name)}"


def creator(obj: Any, skip: int = 2) -> tuple[Optional[_sites.Site], Optional[str]]:
    """The user's line that created ``obj`` (called from its ``__init__``), and the library
    that built it on the user's behalf, if one did.

    Frames whose ``self`` is ``obj`` (its ``__init__``, a subclass's) are skipped, then every
    frame of an installed package; the outermost such frame names the builder.  With no frame
    of the user's on the stack (the program itself is an installed package), the first frame
    outside loopguard and the guarded libraries is the site.
    """
    frame: Optional[FrameType] = sys._getframe(skip)
    builder = None
    fallback: Optional[FrameType] = None
    for _ in range(_sites.MAX_FRAMES):
        if frame is None:
            break
        code = frame.f_code
        if code.co_argcount and frame.f_locals.get(code.co_varnames[0]) is obj:
            frame = frame.f_back
            continue
        filename = code.co_filename
        if not _sites.is_library(filename):
            return _sites.site_of(frame, _context.rootdir), builder
        if not _sites.is_internal(filename):
            fallback = fallback or frame
            builder = _builder_of(frame) or builder
        frame = frame.f_back
    if fallback is not None:
        return _sites.site_of(fallback, _context.rootdir), None
    return None, None


def user_line(skip: int = 2) -> Optional[_sites.Site]:
    """The user's line on the stack now: the first frame outside every installed package
    (else outside loopguard and the guarded libraries)."""
    frame: Optional[FrameType] = sys._getframe(skip)
    fallback: Optional[FrameType] = None
    for _ in range(_sites.MAX_FRAMES):
        if frame is None:
            break
        filename = frame.f_code.co_filename
        if not _sites.is_library(filename):
            return _sites.site_of(frame, _context.rootdir)
        if fallback is None and not _sites.is_internal(filename):
            fallback = frame
        frame = frame.f_back
    return _sites.site_of(fallback, _context.rootdir) if fallback is not None else None


def origin_here(obj: Any, skip: int = 3) -> tuple[Origin, Optional[str]]:
    """The origin of ``obj``, created now (call from its ``__init__``), and its builder."""
    site, builder = creator(obj, skip)
    return Origin(site, _context.current_test(), running_loop() is not None), builder


def binding_here(loop: Any, skip: int = 3) -> Binding:
    """``loop`` owns the client from this use on (its first request on a loop)."""
    return Binding(LoopRef(loop), user_line(skip), _context.current_test())


def mismatch_record(
    code: str,
    resource: str,
    facts: ClientFacts,
    binding: Binding,
    loop: Any,
    action: str,
    operation: Optional[str],
    cause: Optional[str] = None,
) -> Record:
    """LG108/LG109: ``facts``' client, bound by ``binding``, used now on ``loop``."""
    used = user_line(3)
    used_during = _context.current_test()
    site = facts.origin.site
    owner = binding.loop
    return Record(
        code=code,
        action=action,
        resource=resource,
        url=facts.url,
        name=facts.builder,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=facts.origin.created_during,
        created_by=facts.origin.fixture,
        bound_during=binding.during,
        bound_at=str(binding.site) if binding.site else None,
        used_at=str(used) if used else None,
        used_during=used_during,
        operation=operation,
        owner_loop_id=owner.id,
        owner_loop_closed=owner.is_closed(),
        current_loop_id=loop_id(loop),
        cause=cause or likely_cause(owner.state(), used_during is not None),
        owner_loop=owner.describe(),
        used_site=(used.filename, used.lineno) if used else None,
        created_in_loop=facts.origin.created_in_loop,
    )


def origin(scheme: Any, host: Any, port: Any) -> Optional[str]:
    """``scheme://host[:port]``: a URL's origin only.  Paths and queries are never shown: a
    token can be anywhere in them (``/bot<token>/``, ``?key=``)."""
    if not scheme or not host:
        return None
    host = str(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6
    return f"{scheme}://{host}" + (f":{port}" if port else "")
