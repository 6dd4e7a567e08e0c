"""aiohttp: a ``ClientSession`` belongs to the loop it was created on (``ClientSession._loop``).

aiohttp takes the loop when the session is built (the running one; aiohttp before 3.10, with
none running, whatever ``asyncio.get_event_loop()`` returned) and gives it to the session's
connector, its timers and its pooled connections.  A request on another loop fails with
"Event loop is closed" or, with the old loop still open, the misleading "Timeout context
manager should be used inside a task".  Where it hooks:

- ``ClientSession.__init__`` (patched): the creation site, the user's line also when another
  library builds the session (and that library's class).
- ``ClientSession._request`` (patched): every request (``get()``, ``post()``, ...,
  ``request()``, ``ws_connect()``) starts there; on a loop other than ``session._loop`` it is
  stopped before any I/O (LG109).  A closed session is left to aiohttp's own "Session is
  closed".

``warn`` mode only warns (once per session and loop) and lets the request go ahead, and
aiohttp's own error follows: a session cannot be moved to another loop, its loop is in its
connector, its resolver and its timers.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .. import _sites
from .._emit import raise_record, warn_record
from .._log import app_log
from .._loops import LoopRef, current_loop, loop_id
from .._registry import Binding, Origin, Registry
from .._state import STATE
from . import _clients
from ._base import Integration, Patch
from ._clients import ClientFacts

MIN_VERSION = (3, 8)
CODE = "LG109"
RESOURCE = "aiohttp ClientSession"

SESSIONS: Registry[ClientFacts] = Registry("aiohttp sessions")
_UNKNOWN = Origin(None, None, None, known=False)


def _session_url(session: Any) -> Optional[str]:
    url = getattr(session, "_base_url", None)
    if url is None:
        return None
    return _clients.origin(url.scheme, url.host, url.explicit_port)


def _make_session_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            origin, builder = _clients.origin_here(self)
            facts = SESSIONS.add(self, ClientFacts(origin, _session_url(self), builder))
            # Bound where it is built: aiohttp took its loop there.
            facts.binding = Binding(LoopRef(self._loop), origin.site, origin.created_during)
        except Exception as exc:  # the session is built: never fail the user's line for this
            app_log("warning", "loopguard.tracking_failed", resource=RESOURCE, error=repr(exc))

    return __init__


def _make_request(original: Callable[..., Any]) -> Callable[..., Any]:
    async def _request(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        own = self._loop
        loop = current_loop(own)
        if loop is not own and loop is not None:
            _on_other_loop(self, loop, args, kwargs)
        return await original(self, *args, **kwargs)

    return _request


def _facts(session: Any) -> ClientFacts:
    facts = SESSIONS.get(session)
    if facts is None:  # created before install(): its site unknown
        facts = SESSIONS.add(session, ClientFacts(_UNKNOWN, _session_url(session), None))
    binding = facts.binding
    if binding is None or binding.loop() is not session._loop:
        facts.binding = Binding(LoopRef(session._loop), None, None)
    return facts


def _operation(session: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[str]:
    """``GET http://host:port``: the method and the origin, never the path or the query."""
    try:
        method = args[0] if args else kwargs["method"]
        url = session._build_url(args[1] if len(args) > 1 else kwargs["str_or_url"])
        return f"{str(method).upper()} {_clients.origin(url.scheme, url.host, url.explicit_port)}"
    except Exception:
        return None


def _on_other_loop(session: Any, loop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    __tracebackhide__ = True
    if STATE.mode is None or session.closed:  # aiohttp's own "Session is closed", no I/O
        return
    facts = _facts(session)
    binding = facts.binding
    assert binding is not None
    cause = "outside-loop" if facts.origin.created_in_loop is False else None
    raising = STATE.mode == "raise"
    if not raising:
        number = loop_id(loop)
        if facts.warned_loop == number:
            return
        facts.warned_loop = number
    record = _clients.mismatch_record(
        CODE,
        RESOURCE,
        facts,
        binding,
        loop,
        "raised" if raising else "warned",
        _operation(session, args, kwargs),
        cause,
    )
    if raising:
        raise raise_record(record)
    warn_record(record)


class AiohttpIntegration(Integration):
    name = "aiohttp"
    module = "aiohttp"
    min_version = MIN_VERSION
    requirement = "aiohttp"
    patches = (
        Patch("aiohttp.client:ClientSession", "__init__", _make_session_init),
        Patch("aiohttp.client:ClientSession", "_request", _make_request),
    )

    def setup(self) -> None:
        _sites.reset_caches()  # aiohttp may be imported after the sites' prefixes were read

    def teardown(self) -> None:
        SESSIONS.clear()

    def __repr__(self) -> str:
        return f"<AiohttpIntegration tracking {len(SESSIONS)} sessions>"
