"""httpx: an ``AsyncClient``'s connection pool belongs to the loop of its first request.

httpx sends every request of an ``AsyncClient`` through its transport's httpcore
``AsyncConnectionPool``, which keeps keep-alive connections whose sockets are registered with
the loop they were opened on; a later request on another loop picks one of them and fails
with "Event loop is closed" (or hangs on an idle loop).  Where it hooks:

- ``httpx.AsyncClient.__init__`` (patched): the creation site, the user's line also when
  another library builds the client (``openai.AsyncOpenAI(...)``: that line, and the SDK's
  class); recorded for the pools of the client's transports (its own and its mounts').
- ``httpcore.AsyncConnectionPool.handle_async_request`` (patched): every request of every
  async transport passes here before the pool picks or opens a connection.  The first
  request on a running loop binds the pool to that loop; a request on another loop is
  stopped there, before any I/O (LG108), unless the pool holds nothing of the old loop (no
  open connection, no request in flight; after ``aclose()``, say): then the new loop takes
  it, silently.  The wrapper checks and returns httpcore's own coroutine, so the hot path
  adds one loop check and no coroutine.

``warn`` mode heals where that is safe: when the old loop is closed or idle and every pooled
connection is idle, their sockets are closed directly (no I/O on the old loop), the pool
forgets them and belongs to the new loop.  Where it is not safe (a request or a streamed
response still in progress on the old loop, or that loop running in another thread) it only
warns and the request goes ahead as without loopguard.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable, Optional

from .. import _sites
from .._emit import raise_record, warn_record
from .._log import app_log
from .._loops import LoopRef, current_loop, loop_id
from .._registry import Origin, Registry
from .._state import STATE
from . import _clients, _httpx_pool
from ._base import Integration, Patch
from ._clients import ClientFacts

MIN_VERSION = (0, 23)
CODE = "LG108"
RESOURCE = "httpx AsyncClient"

# Connection pools, keyed by the pool; their facts are the client's that built them.
POOLS: Registry[ClientFacts] = Registry("httpx connection pools")
_lookup = POOLS.lookup
_UNKNOWN = Origin(None, None, None, known=False)
_pool_class: Any = None  # httpcore.AsyncConnectionPool, set by setup()


def _client_url(client: Any) -> Optional[str]:
    url = getattr(client, "base_url", None)
    return _clients.origin(
        getattr(url, "scheme", None), getattr(url, "host", None), url and url.port
    )


def _transports(client: Any) -> list[Any]:
    mounts = getattr(client, "_mounts", {}) or {}
    return [client._transport, *mounts.values()]


def _make_client_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            origin, builder = _clients.origin_here(self)
            url = _client_url(self)
            for transport in _transports(self):
                pool = getattr(transport, "_pool", None)
                if _pool_class and isinstance(pool, _pool_class) and pool not in POOLS:
                    POOLS.add(pool, ClientFacts(origin, url, builder))
        except Exception as exc:  # the client is built: never fail the user's line for this
            app_log("warning", "loopguard.tracking_failed", resource=RESOURCE, error=repr(exc))

    return __init__


def _make_handle_async_request(original: Callable[..., Any]) -> Callable[..., Any]:
    def handle_async_request(self: Any, request: Any) -> Any:
        __tracebackhide__ = True
        facts = _lookup(id(self)) or _adopt(self)
        binding = facts.binding
        # loop._ref: the weakref itself, a C call (LoopRef.__call__ adds a Python frame)
        owner = binding.loop._ref() if binding is not None else None
        loop = current_loop(owner)
        if loop is not owner and loop is not None:
            _on_other_loop(self, facts, loop, request)  # binds, raises, or warns (and heals)
        return original(self, request)  # httpcore's coroutine, awaited by the caller

    # Still a coroutine function to inspect and asyncio, as the method it replaces.
    if hasattr(inspect, "markcoroutinefunction"):  # Python 3.12+
        inspect.markcoroutinefunction(handle_async_request)
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)  # asyncio before 3.12
    if marker is not None:
        handle_async_request._is_coroutine = marker  # type: ignore[attr-defined]
    return handle_async_request


def _adopt(pool: Any) -> ClientFacts:
    """A pool no AsyncClient was seen building (before install(), or httpcore used alone)."""
    return POOLS.add(pool, ClientFacts(_UNKNOWN, None, None))


def _operation(request: Any) -> Optional[str]:
    """``GET http://host:port``: the method and the origin, never the path or the query."""
    try:
        url = request.url
        where = _clients.origin(url.scheme.decode(), url.host.decode(), url.port)
        return f"{request.method.decode()} {where}"
    except Exception:
        return None


def _on_other_loop(pool: Any, facts: ClientFacts, loop: Any, request: Any) -> None:
    __tracebackhide__ = True
    binding = facts.binding
    if binding is None or _httpx_pool.holds_nothing(pool):
        # First request on a loop, or nothing of the old loop left: this loop takes it.
        facts.binding = _clients.binding_here(loop)
        facts.warned_loop = None
        return
    if STATE.mode == "raise":
        raise raise_record(
            _clients.mismatch_record(
                CODE, RESOURCE, facts, binding, loop, "raised", _operation(request)
            )
        )
    if _can_heal(pool, binding):
        released, closed = _httpx_pool.release_all(pool, binding.loop.id)
        facts.binding = _clients.binding_here(loop)
        facts.heals += 1
        facts.warned_loop = None
        record = _clients.mismatch_record(
            CODE, RESOURCE, facts, binding, loop, "warned", _operation(request)
        )
        warn_record(record.replace(released=released, sockets_closed=closed))
        return
    number = loop_id(loop)
    if facts.warned_loop == number:
        return
    facts.warned_loop = number
    record = _clients.mismatch_record(
        CODE, RESOURCE, facts, binding, loop, "warned", _operation(request)
    )
    warn_record(record)


def _can_heal(pool: Any, binding: Any) -> bool:
    """The old loop cannot be using the pool now (closed, or open and not running) and no
    connection is in use: dropping them is what ``aclose()`` would do, minus the I/O."""
    owner: LoopRef = binding.loop
    return owner.state() != "running" and _httpx_pool.can_release(pool)


class HttpxIntegration(Integration):
    name = "httpx"
    module = "httpx"
    min_version = MIN_VERSION
    requirement = "httpx"
    patches = (
        Patch("httpx:AsyncClient", "__init__", _make_client_init),
        Patch("httpcore:AsyncConnectionPool", "handle_async_request", _make_handle_async_request),
    )

    def setup(self) -> None:
        global _pool_class
        import httpcore

        _pool_class = httpcore.AsyncConnectionPool
        _sites.reset_caches()  # httpx may be imported after the sites' prefixes were read

    def teardown(self) -> None:
        global _pool_class
        _pool_class = None
        POOLS.clear()

    def __repr__(self) -> str:
        return f"<HttpxIntegration tracking {len(POOLS)} connection pools>"
