"""psycopg_pool's ``AsyncConnectionPool`` used directly: it belongs to the loop it was opened on.

``open()`` (or ``async with pool``, or ``open=True`` in the constructor) starts the pool's
worker tasks and its scheduler on the running loop, and its lock and conditions wait there.
Used from another loop, ``getconn()`` waits for a worker that never answers on this loop:
a hang, then ``PoolTimeout``.  loopguard reports it before any waiting (LG112).

Where it hooks (class-attribute patches, undone exactly by ``uninstall()``):
- ``AsyncConnectionPool.__init__``: the creation site.
- ``AsyncConnectionPool._open``: the plain method every way of opening goes through, on the
  loop that will own the pool; binds the pool to it.
- ``AsyncConnectionPool._check_open_getconn``: the plain method ``getconn()`` (and
  ``connection()``, ``wait()``) calls first, before taking the lock: the loop check.
- ``AsyncConnectionPool._check_pool_putconn``: the first step of ``putconn()``.
- ``AsyncConnectionPool.close``: checked before it takes the lock (a coroutine wrapper: one
  per close, not per connection).

``AsyncNullConnectionPool`` is a subclass: guarded the same way (its lock and workers belong
to its loop too).

Modes: raise: ``LoopMismatchError`` before any waiting, the pool untouched for its own loop.
warn: the record and a ``LoopMismatchWarning`` (once per pool and loop), then the call goes
ahead: a pool's tasks cannot be moved to another loop, so psycopg_pool's own ``PoolTimeout``
follows, as it would without loopguard.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .. import _context, _secrets, _sites
from .._causes import likely_cause
from .._emit import raise_record, warn_record
from .._loops import LoopRef, current_loop, loop_id, running_loop
from .._record import Record
from .._registry import Binding, Origin, Registry, Tracked
from .._state import STATE
from ._base import Integration, Patch

RESOURCE = "psycopg_pool AsyncConnectionPool"
CODE = "LG112"
_UNKNOWN = Origin(None, None, None, known=False)


class PoolFacts(Tracked):
    """One pool: where it was created and opened, and its conninfo (rendered without secrets
    when a record needs it)."""

    __slots__ = ("conninfo",)

    def __init__(self, origin: Origin, conninfo: str) -> None:
        super().__init__(origin)
        self.conninfo = conninfo


POOLS: Registry[PoolFacts] = Registry("psycopg_pool pools")
_lookup = POOLS.lookup


def _facts(pool: Any) -> PoolFacts:
    facts = _lookup(id(pool))
    if facts is None:
        facts = POOLS.add(pool, PoolFacts(_UNKNOWN, str(getattr(pool, "conninfo", ""))))
    return facts


def _record(pool: Any, facts: PoolFacts, loop: Any, action: str, operation: str) -> Record:
    binding = facts.binding
    assert binding is not None
    used = _sites.user_site(_context.rootdir, skip=3)
    site = facts.origin.site
    used_during = _context.current_test()
    return Record(
        code=CODE,
        action=action,
        resource=RESOURCE,
        operation=operation,
        url=_secrets.mask_dsn(facts.conninfo) if facts.conninfo else None,
        pool_class=type(pool).__name__,
        created_at=site.location if site else None,
        created_in=site.function if site else None,
        created_during=facts.origin.created_during,
        bound_during=binding.during,
        bound_at=str(binding.site) if binding.site else None,
        used_at=str(used) if used else None,
        used_during=used_during,
        owner_loop_id=binding.loop.id,
        owner_loop_closed=binding.loop.is_closed(),
        current_loop_id=loop_id(loop),
        cause=likely_cause(binding.loop.state(), used_during is not None),
        owner_loop=binding.loop.describe(),
        used_site=(used.filename, used.lineno) if used else None,
        created_in_loop=facts.origin.created_in_loop,
    )


def _check(pool: Any, operation: str) -> None:
    """The loop check: one dict lookup, a weak reference call and ``current_loop``."""
    __tracebackhide__ = True
    facts = _lookup(id(pool))
    if facts is None or facts.binding is None:
        return
    owner = facts.binding.loop._ref()
    loop = current_loop(owner)
    if loop is owner or loop is None or STATE.mode is None:
        return
    if STATE.mode == "raise":
        raise raise_record(_record(pool, facts, loop, "raised", operation))
    number = loop_id(loop)
    if facts.warned_loop != number:
        facts.warned_loop = number
        warn_record(_record(pool, facts, loop, "warned", operation))


# -- wrappers -----------------------------------------------------------------------------


def _make_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        site = _sites.user_site(_context.rootdir, skip=2)
        origin = Origin(site, _context.current_test(), running_loop() is not None)
        _facts(self).origin = origin  # open=True: _open() made the entry already

    return __init__


def _make_open(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def _open(self: Any) -> None:
        original(self)
        loop = running_loop()
        facts = _facts(self)
        if loop is not None and not self._closed and facts.binding is None:
            site = _sites.user_site(_context.rootdir, skip=2)
            facts.binding = Binding(LoopRef(loop), site, _context.current_test())

    return _open


def _make_check_open_getconn(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def _check_open_getconn(self: Any) -> None:
        __tracebackhide__ = True
        original(self)  # closed or not open: psycopg_pool's own PoolClosed, no waiting
        _check(self, "getconn")

    return _check_open_getconn


def _make_check_pool_putconn(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def _check_pool_putconn(self: Any, conn: Any) -> None:
        __tracebackhide__ = True
        original(self, conn)
        _check(self, "putconn")

    return _check_pool_putconn


def _make_close(original: Callable[..., Any]) -> Callable[..., Any]:
    async def close(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if not self._closed:
            _check(self, "close")
        try:
            return await original(self, *args, **kwargs)
        finally:
            if self._closed:
                POOLS.discard(self)

    return close


class PsycopgPoolIntegration(Integration):
    name = "psycopg_pool"
    module = "psycopg_pool"
    min_version = (3, 1)
    label = "psycopg_pool"
    requirement = "psycopg-pool"
    patches = (
        Patch("psycopg_pool:AsyncConnectionPool", "__init__", _make_init),
        Patch("psycopg_pool:AsyncConnectionPool", "_open", _make_open),
        Patch("psycopg_pool:AsyncConnectionPool", "_check_open_getconn", _make_check_open_getconn),
        Patch("psycopg_pool:AsyncConnectionPool", "_check_pool_putconn", _make_check_pool_putconn),
        Patch("psycopg_pool:AsyncConnectionPool", "close", _make_close),
    )

    def version_of(self, module: Any) -> Optional[str]:
        version = getattr(module, "__version__", None)
        return version if isinstance(version, str) else None

    def teardown(self) -> None:
        POOLS.clear()

    def __repr__(self) -> str:
        return f"<PsycopgPoolIntegration tracking {len(POOLS)} pools>"
