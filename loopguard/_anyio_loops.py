"""Names for the event loops anyio makes, so that messages say whose loop it was.

- ``anyio.from_thread.start_blocking_portal`` starts an event loop in a thread of its own and
  hands back a portal to it.  Starlette's (and so FastAPI's) ``TestClient`` runs the
  application that way: one portal for a ``with TestClient(app)`` block
  (``TestClient.__enter__``), or, used without ``with``, a new one for every request
  (``TestClient._portal_factory``).  The wrapper (a module attribute, which is how Starlette
  calls it) names the loop once the portal is up: "Starlette TestClient's loop for one
  request, at tests/test_app.py:14, in thread asyncio-portal-7f2c..." (kind
  ``test-client-request``), "... for the `with` block at ..." (``test-client``), or "an anyio
  blocking portal's loop ..." (``anyio-portal``).
- ``anyio._backends._asyncio.TestRunner.__enter__``: the loop of anyio's pytest plugin
  (``@pytest.mark.anyio``), which lives while a test or an async fixture holds it: "anyio's
  loop for tests/test_a.py::test_one[asyncio]" or "anyio's loop for the session-scoped fixture
  'engine' at conftest.py:12" (kind ``anyio-test``).

Both run once per loop, never on a guarded call; anyio is never imported for them (each
patch waits for its module's first import).  Naming never fails the caller: a portal whose
loop cannot be found (another anyio line, another backend) is left unnamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Callable, Optional

from . import _context, _loops, _sites
from ._log import report_once
from ._patterns import ANYIO_PORTAL, ANYIO_TEST, TEST_CLIENT, TEST_CLIENT_REQUEST
from .integrations._base import Integration, Patch


def portal_loop(portal: Any) -> Optional[asyncio.AbstractEventLoop]:
    """The asyncio loop a BlockingPortal calls into: ``_token.native_token`` (anyio 4.11+),
    ``_loop`` before; None for another backend."""
    token = getattr(portal, "_token", None)
    loop = getattr(token, "native_token", None) if token is not None else None
    if loop is None:
        loop = getattr(portal, "_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def _thread_name(loop: Any) -> Optional[str]:
    ident = getattr(loop, "_thread_id", None)
    for thread in threading.enumerate():
        if ident is not None and thread.ident == ident:
            return thread.name
    return None


def _test_client_use(frame: Optional[FrameType]) -> Optional[str]:
    """The kind of portal a Starlette TestClient is starting in ``frame`` (the caller of
    start_blocking_portal), or None when no TestClient is."""
    testclient = sys.modules.get("starlette.testclient")
    cls = getattr(testclient, "TestClient", None)
    if frame is None or not isinstance(cls, type):
        return None
    if not isinstance(frame.f_locals.get("self"), cls):
        return None
    return TEST_CLIENT if frame.f_code.co_name == "__enter__" else TEST_CLIENT_REQUEST


def _portal_name(kind: str, site: Optional[_sites.Site], thread: Optional[str]) -> str:
    at = f", at {site}" if site else ""
    in_thread = f", in thread {thread}" if thread else ""
    if kind == TEST_CLIENT_REQUEST:
        return f"Starlette TestClient's loop for one request{at}{in_thread}"
    if kind == TEST_CLIENT:
        block = f"the `with` block at {site}" if site else "a `with` block"
        return f"Starlette TestClient's loop for {block}{in_thread}"
    started = f", started at {site}" if site else ""
    return f"an anyio blocking portal's loop{started}{in_thread}"


@contextlib.contextmanager
def _named_portal(manager: Any, kind: str, site: Optional[_sites.Site]) -> Iterator[Any]:
    with manager as portal:
        try:
            loop = portal_loop(portal)
            if loop is not None:
                _loops.name_loop(loop, _portal_name(kind, site, _thread_name(loop)), kind)
        except Exception as exc:  # a name is worth less than the caller's portal
            report_once("naming an anyio portal's loop", exc, "the loop stays unnamed")
        yield portal


def _make_start_blocking_portal(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def start_blocking_portal(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        try:
            caller = sys._getframe(1)
            kind = _test_client_use(caller) or ANYIO_PORTAL
            site = _sites.user_site(_context.rootdir, skip=2)
        except Exception as exc:
            report_once("naming an anyio portal's loop", exc, "the loop stays unnamed")
            return manager
        return _named_portal(manager, kind, site)

    return start_blocking_portal


def runner_holder() -> str:
    """Who holds anyio's pytest loop as it is made: a fixture being set up, else the test."""
    fixture = _context.current_fixture()
    if fixture is not None:
        return f"the {fixture}"
    test = _context.current_test()
    return test.rsplit(" (", 1)[0] if test else "a test"


def _make_runner_enter(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def __enter__(self: Any) -> Any:
        result = original(self)
        try:
            get_loop = getattr(self, "get_loop", None)  # 4.x; 3.x keeps it in _loop
            loop = get_loop() if get_loop is not None else getattr(self, "_loop", None)
            if isinstance(loop, asyncio.AbstractEventLoop):
                _loops.name_loop(loop, f"anyio's loop for {runner_holder()}", ANYIO_TEST)
        except Exception as exc:
            report_once("naming anyio's pytest loop", exc, "the loop stays unnamed")
        return result

    return __enter__


class AnyioPortals(Integration):
    """anyio's blocking portals (Starlette's TestClient): their loops named."""

    name = "anyio-portals"
    module = "anyio.from_thread"
    core = True
    patches = (Patch("anyio.from_thread", "start_blocking_portal", _make_start_blocking_portal),)


class AnyioTestRunner(Integration):
    """The loops of anyio's pytest plugin, named (anyio's asyncio backend, loaded lazily)."""

    name = "anyio-test-runner"
    module = "anyio._backends._asyncio"
    core = True
    patches = (
        Patch(
            "anyio._backends._asyncio:TestRunner", "__enter__", _make_runner_enter, required=False
        ),
    )
