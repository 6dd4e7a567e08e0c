"""The public API for any loop-bound object: ``track()``, ``check()`` and ``unbind()``.

A library (or an application) calls these for objects of its own that belong to one event
loop: ``track(obj)`` where it creates one, ``check(obj)`` before each use that does I/O,
``unbind(obj)`` where it releases what ties the object to its loop (the analogue of
``await engine.dispose()``).  The first ``check()`` on a running loop binds the object to
that loop; a ``check()`` on any other loop reports code LG107 with the facts the built-in
guards give: where the object was created, where and during which test it was bound, where
it is used now, whether its loop is closed, the likely cause and the fix.

All three are cheap no-ops while loopguard is not installed (one attribute test, nothing
imported), so a library can call them unconditionally.
"""

from __future__ import annotations

from typing import Any, Optional, TypeVar

from ._state import STATE

T = TypeVar("T")
_impl: Any = None  # loopguard._tracking, imported on the first call made while installed


def _tracking() -> Any:
    global _impl
    if _impl is None:
        from . import _tracking as module

        _impl = module
    return _impl


def track(obj: T, *, name: Optional[str] = None) -> T:
    """Register ``obj`` as belonging to the event loop of its first ``check()``; returns it.

    Its creation site is the line that called ``track()`` or, when ``track()`` is called
    from a method of ``obj`` (its ``__init__``), the line that created ``obj``.

    Args:
        obj: any object that belongs to one event loop once used (a client, a pool, a lock).
        name: how messages name it, besides its class; never put a secret here.
    """
    if STATE.mode is None:
        return obj
    return _tracking().track(obj, name)  # type: ignore[no-any-return]


def check(obj: Any) -> None:
    """Bind ``obj`` to the running loop on first use; on another loop, report code LG107.

    With no loop running, nothing is checked.  An object never passed to ``track()`` is
    tracked from its first ``check()`` (its creation site then unknown).

    Raises:
        loopguard.LoopMismatchError: in ``raise`` mode, when ``obj`` belongs to another loop
            (``warn`` mode: a ``loopguard.LoopMismatchWarning``, once per object and loop).
    """
    if STATE.mode is None:
        return
    __tracebackhide__ = True
    error = (_impl or _tracking()).check(obj)
    if error is not None:
        raise error


def unbind(obj: Any) -> None:
    """Forget which loop ``obj`` belongs to (it released what tied it to that loop): its next
    ``check()`` binds it again, to whatever loop runs then."""
    if STATE.mode is None:
        return
    _tracking().unbind(obj)
