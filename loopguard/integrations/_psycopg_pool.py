"""psycopg_pool's ``AsyncConnectionPool``: a pool belongs to the event loop that opened it.

``open()`` (also ``async with pool``, or ``open=True`` in the constructor) spawns the pool's
scheduler and worker tasks on the running loop, and its lock and queues work on that loop
only.  The tasks die with the loop; on another loop the pool still hands out the connections
it holds, but every connection it has to open, replace or reset is a job for those dead
workers: a client waits for a connection that never comes and gets ``PoolTimeout`` after the
pool's timeout (30 seconds by default).  A pool cannot be reopened once closed, so it is bound
once, for life.

Where it hooks (class-attribute patches, each undone exactly by ``uninstall()``):

- ``AsyncConnectionPool.__init__``: the creation site (the line that created the pool, also
  through a subclass's ``__init__``).
- ``AsyncConnectionPool._open``: the binding, to the loop the pool's tasks were spawned on,
  with the line that opened it.  A pool opened before ``install()`` is bound to its tasks'
  loop at its first use.
- ``AsyncConnectionPool._check_open_getconn`` (``getconn()``, ``connection()``, ``wait()``)
  and ``_check_pool_putconn`` (``putconn()``): the plain methods those call first, before
  any lock, task or I/O: the hot path is one loop check and an identity compare.
- ``open``, ``close``, ``resize``, ``check`` and ``drain`` (and the null pool's ``resize``):
  checked when awaited, before the original runs.

Subclasses (``AsyncNullConnectionPool``, the application's own) are covered by the same
patches.  ``warn`` mode reports (record and ``LoopMismatchWarning``, once per pool and loop)
and lets the call go ahead unchanged: nothing can be healed safely, since the pool's worker
tasks, lock and waiting clients cannot be moved to another loop, so psycopg_pool behaves as
it would without loopguard (often a hang until ``PoolTimeout``).
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any, Callable, Optional

from .. import _context, _secrets, _sites
from .._causes import likely_cause
from .._emit import raise_record, warn_record
from .._loops import LoopRef, current_loop, loop_id, running_loop
from .._record import Record
from .._registry import Binding, Origin, Registry, Tracked
from .._state import STATE
from ._base import Integration, Patch

LG112 = "LG112"
MIN_VERSION = (3, 1)
RESOURCE = "psycopg_pool AsyncConnectionPool"
_POOL = "psycopg_pool.pool_async:AsyncConnectionPool"
_NULL_POOL = "psycopg_pool.null_pool_async:AsyncNullConnectionPool"
# The connection parameters a URL may show when the pool has no conninfo string.
_SHOWN_KWARGS = ("host", "port", "dbname", "user")

POOLS: Registry[Tracked] = Registry("psycopg_pool pools")
_lookup = POOLS.lookup
_UNKNOWN = Origin(None, None, None, known=False)
_library_dir: list[str] = []  # psycopg_pool's directory, set by setup()


def _tasks_loop(pool: Any) -> Any:
    """The loop the pool's scheduler task runs on (None: not open, or not found)."""
    task = getattr(pool, "_sched_runner", None)
    get_loop = getattr(task, "get_loop", None)
    return get_loop() if get_loop is not None else None


def _bind(facts: Tracked, loop: Any, site: Optional[_sites.Site], during: Optional[str]) -> None:
    loop_id(loop)  # number loops in the order they are bound
    facts.binding = Binding(LoopRef(loop), site, during)


def _facts_for(pool: Any) -> Optional[Tracked]:
    """The pool's facts, adopting an open pool not seen before (opened before install())."""
    facts = _lookup(id(pool))
    if facts is None or facts.binding is None:
        loop = None if getattr(pool, "_closed", True) else _tasks_loop(pool)
        if loop is None:
            return None  # not open (or closed): psycopg_pool's own PoolClosed follows
        if facts is None:
            facts = POOLS.add(pool, Tracked(_UNKNOWN))
        _bind(facts, loop, None, None)  # where and when it was opened: unknown
    return facts


# -- the slow path: a pool used on a loop that is not its own ------------------------------


def _operation(pool: Any, frame: Optional[FrameType], default: str) -> str:
    """The public pool method the user called: the outermost frame in psycopg_pool's files
    (``connection`` rather than the ``getconn`` it calls, ``__aenter__`` rather than
    ``open``), else ``default``."""
    name = default
    ours = (*_library_dir, os.path.dirname(os.path.dirname(__file__)) + os.sep)
    for _ in range(_sites.MAX_FRAMES):
        if frame is None or not frame.f_code.co_filename.startswith(ours):
            break
        if _library_dir and frame.f_code.co_filename.startswith(_library_dir[0]):
            name = frame.f_code.co_name
        frame = frame.f_back
    return f"{type(pool).__name__}.{name}"


def pool_url(pool: Any) -> Optional[str]:
    """The pool's conninfo without secrets; from its ``kwargs`` when it has none (only host,
    port, dbname and user); None when it is computed at connect time (a callable)."""
    conninfo = getattr(pool, "conninfo", "")
    if isinstance(conninfo, str) and conninfo:
        return _secrets.mask_dsn(conninfo)
    kwargs = getattr(pool, "kwargs", None)
    if conninfo or not isinstance(kwargs, dict):
        return None
    shown = [f"{key}={kwargs[key]}" for key in _SHOWN_KWARGS if kwargs.get(key) is not None]
    return _secrets.mask_dsn(" ".join(shown)) if shown else None


def mismatch_record(
    pool: Any, facts: Tracked, binding: Binding, loop: Any, action: str, operation: str
) -> Record:
    owner = binding.loop
    used = _sites.user_site(_context.rootdir, skip=3)
    used_during = _context.current_test()
    site = facts.origin.site
    return Record(
        code=LG112,
        action=action,
        resource=RESOURCE,
        operation=operation,
        url=pool_url(pool),
        name=getattr(pool, "name", None),
        pool_class=type(pool).__name__,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=facts.origin.created_during,
        bound_during=binding.during,
        bound_at=str(binding.site) if binding.site else None,
        used_at=str(used) if used else None,
        used_during=used_during,
        owner_loop_id=owner.id,
        owner_loop_closed=owner.is_closed(),
        current_loop_id=loop_id(loop),
        cause=likely_cause(owner.state(), used_during is not None),
        owner_loop=owner.describe(),
        used_site=(used.filename, used.lineno) if used else None,
        created_in_loop=facts.origin.created_in_loop,
    )


def _on_foreign_loop(pool: Any, loop: Any, caller: Optional[FrameType], default: str) -> None:
    """``loop`` is running and is not the loop the pool is known to belong to (if any)."""
    __tracebackhide__ = True
    if STATE.mode is None:
        return
    facts = _facts_for(pool)
    if facts is None or facts.binding is None or getattr(pool, "_closed", True):
        return  # not open: nothing of a loop to protect
    binding = facts.binding
    if binding.loop._ref() is loop:
        return  # adopted just now, and it is this loop's
    operation = _operation(pool, caller, default)
    if STATE.mode == "raise":
        raise raise_record(mismatch_record(pool, facts, binding, loop, "raised", operation))
    number = loop_id(loop)
    if facts.warned_loop == number:
        return
    facts.warned_loop = number
    warn_record(mismatch_record(pool, facts, binding, loop, "warned", operation))


# -- wrappers -------------------------------------------------------------------------------


def _creator_site(pool: Any) -> Optional[_sites.Site]:
    """The user's line that created ``pool``: frames whose ``self`` is the pool (a subclass's
    ``__init__``) are skipped, and so are loopguard's and the libraries' it knows."""
    frame: Optional[FrameType] = sys._getframe(2)
    for _ in range(_sites.MAX_FRAMES):
        if frame is None:
            return None
        if not (frame.f_code.co_argcount and frame.f_locals.get("self") is pool) and not (
            _sites.is_internal(frame.f_code.co_filename)
        ):
            return _sites.site_of(frame, _context.rootdir)
        frame = frame.f_back
    return None


def _make_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        origin = Origin(_creator_site(self), _context.current_test(), running_loop() is not None)
        POOLS.add(self, Tracked(origin))
        original(self, *args, **kwargs)

    return __init__


def _make_open(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """``_open()``: the pool's tasks are spawned now, on the loop that binds it."""

    def _open(self: Any) -> None:
        was_closed = self._closed
        original(self)
        if was_closed and not self._closed:
            facts = _lookup(id(self)) or POOLS.add(self, Tracked(_UNKNOWN))
            loop = _tasks_loop(self) or running_loop()
            if loop is not None:
                site = _sites.user_site(_context.rootdir, skip=2)
                _bind(facts, loop, site, _context.current_test())

    return _open


def _make_check_open_getconn(original: Callable[[Any], None]) -> Callable[[Any], None]:
    """``getconn()`` (and ``connection()``) and ``wait()`` call this first: the loop is
    checked before psycopg_pool's own check, which may warn about an implicit open."""

    def _check_open_getconn(self: Any) -> None:
        __tracebackhide__ = True
        facts = _lookup(id(self))
        binding = facts.binding if facts is not None else None
        # loop._ref: the weakref itself, a C call (LoopRef.__call__ adds a Python frame)
        owner = binding.loop._ref() if binding is not None else None
        loop = current_loop(owner)
        if loop is not owner and loop is not None:
            _on_foreign_loop(self, loop, sys._getframe(1), "getconn")
        original(self)

    return _check_open_getconn


def _make_check_pool_putconn(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``putconn()`` calls this first; psycopg_pool's own check (a connection of another
    pool) goes first."""

    def _check_pool_putconn(self: Any, conn: Any) -> None:
        __tracebackhide__ = True
        original(self, conn)
        facts = _lookup(id(self))
        binding = facts.binding if facts is not None else None
        owner = binding.loop._ref() if binding is not None else None
        loop = current_loop(owner)
        if loop is not owner and loop is not None:
            _on_foreign_loop(self, loop, sys._getframe(1), "putconn")

    return _check_pool_putconn


def _make_coroutine(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``open``, ``close``, ``resize``, ``check``, ``drain``: checked when awaited."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            facts = _lookup(id(self))
            binding = facts.binding if facts is not None else None
            owner = binding.loop._ref() if binding is not None else None
            loop = current_loop(owner)
            if loop is not owner and loop is not None:
                _on_foreign_loop(self, loop, sys._getframe(1), name)
            try:
                return await original(self, *args, **kwargs)
            finally:
                if name == "close" and self._closed:
                    POOLS.discard(self)  # closed for good: a pool cannot be reopened

        return guarded

    return make


class PsycopgPoolIntegration(Integration):
    name = "psycopg_pool"
    module = "psycopg_pool"
    min_version = MIN_VERSION
    label = "psycopg_pool"
    requirement = "psycopg-pool"
    patches = (
        Patch(_POOL, "__init__", _make_init),
        Patch(_POOL, "_open", _make_open),
        Patch(_POOL, "_check_open_getconn", _make_check_open_getconn),
        Patch(_POOL, "_check_pool_putconn", _make_check_pool_putconn),
        Patch(_POOL, "open", _make_coroutine("open")),
        Patch(_POOL, "close", _make_coroutine("close")),
        Patch(_POOL, "resize", _make_coroutine("resize")),
        Patch(_POOL, "check", _make_coroutine("check")),
        Patch(_POOL, "drain", _make_coroutine("drain"), required=False),
        Patch(_NULL_POOL, "resize", _make_coroutine("resize"), required=False),
    )

    def setup(self) -> None:
        import psycopg_pool

        _library_dir[:] = [os.path.dirname(psycopg_pool.__file__) + os.sep]
        _sites.reset_caches()  # psycopg_pool's frames are not the user's from now on

    def teardown(self) -> None:
        POOLS.clear()
        _library_dir.clear()

    def __repr__(self) -> str:
        return f"<PsycopgPoolIntegration tracking {len(POOLS)} pools>"
