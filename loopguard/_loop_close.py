"""Loop closing as a core event: integrations subscribe to hear of a loop about to close.

``BaseEventLoop.close`` (every asyncio loop) and ``uvloop.Loop.close`` are wrapped once, by
the ``loops`` and ``uvloop`` integrations below, whatever guards listen: a pool that still
holds a closing loop's connections can only leak them now (LG106), and that is worth saying
while the loop still exists.  A listener never keeps ``close()`` from completing.
"""

from __future__ import annotations

from typing import Any, Callable

from ._log import report_once
from .integrations._base import Integration, Patch

Listener = Callable[[Any], None]

_listeners: list[Listener] = []


def subscribe(listener: Listener) -> None:
    """Call ``listener(loop)`` whenever an open loop is about to close (until unsubscribed)."""
    if listener not in _listeners:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def _notify(loop: Any) -> None:
    for listener in list(_listeners):
        try:
            listener(loop)
        except Exception as exc:
            # Raised from close(), it would replace the error asyncio.run() is ending with,
            # or fail a run that had none; said once, like a failing sink.
            report_once("a report at loop close", exc, "the loop was closed")


def _make_close(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def close(self: Any) -> None:
        if _listeners and not self.is_closed():  # once per loop: nothing on a hot path
            try:
                _notify(self)
            finally:
                # Whatever happened above (KeyboardInterrupt included), the loop closes.
                original(self)
            return
        original(self)

    return close


class AsyncioLoops(Integration):
    """asyncio's own loops: the close() every other guard hears of."""

    name = "asyncio-loops"
    module = "asyncio"
    core = True
    patches = (Patch("asyncio.base_events:BaseEventLoop", "close", _make_close),)


class UvloopLoops(Integration):
    """uvloop's loops, once uvloop is imported (it is never imported for this: ~5 ms)."""

    name = "uvloop"
    module = "uvloop"
    core = True
    patches = (Patch("uvloop:Loop", "close", _make_close),)
