"""The runner's own process in one arm or another, and the proof that "off" is untouched.

Imported by ``run.py`` after ``_env`` (which puts ``--loopguard-src`` on ``sys.path``):
SQLAlchemy's three most-used patch points are taken *before* loopguard is imported, the
integrations' full patch tables right after (``_patch_tables``); ``assert_unpatched`` checks
both, and the wrapper-mark scan of every class, before every off rep and after every
``uninstall()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

# Taken before loopguard is imported: "off" must mean these exact objects are in place.
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

# Engine._has_events: any Engine-class listener turns on SQLAlchemy's event-dispatch path for
# every connection of every engine; "off" must leave it as it was.
ORIGINAL_HAS_EVENTS = Engine.__dict__.get("_has_events")
ORIGINALS = {
    ("QueuePool", "_do_get"): (QueuePool, QueuePool.__dict__["_do_get"]),
    ("QueuePool", "dispose"): (QueuePool, QueuePool.__dict__["dispose"]),
    ("AsyncEngine", "__init__"): (AsyncEngine, AsyncEngine.__dict__["__init__"]),
}

import asyncpg  # noqa: E402, F401 - its patch points are in the tables checked below

with contextlib.suppress(ImportError):  # the HTTP clients' and redis's patch points too
    import aiohttp  # noqa: F401
    import httpx  # noqa: F401
with contextlib.suppress(ImportError):
    import redis.asyncio  # noqa: F401

from _patch_tables import changed, originals  # noqa: E402
from _worker import patched_attributes  # noqa: E402 - every class in every loaded module

import loopguard  # noqa: E402

# Every integration's patch points for the libraries imported above, as they are now (off).
TABLE_ORIGINALS = originals()

ARMS = ("off", "raise", "debug")


def assert_unpatched(when: str) -> None:
    for (owner_name, attr), (owner, original) in ORIGINALS.items():
        if owner.__dict__.get(attr) is not original:
            raise AssertionError(f"{when}: {owner_name}.{attr} is not SQLAlchemy's original")
    table = changed(TABLE_ORIGINALS)
    if table:
        raise AssertionError(f"{when}: patch points not as before: {table}")
    wrapped = patched_attributes()
    if wrapped or loopguard.is_installed():
        raise AssertionError(f"{when}: loopguard still installed or patched: {wrapped}")


class ArmState:
    restores_checked = 0


@contextlib.contextmanager
def arm(name: str) -> Iterator[None]:
    """Put the process in one arm's state; loopguard is removed again on exit."""
    if name == "raise":
        loopguard.install("raise")
        try:
            yield
        finally:
            loopguard.uninstall()
            assert_unpatched("after uninstall()")
            ArmState.restores_checked += 1
    else:
        assert_unpatched(f"arm {name}")
        yield


def new_loop(arm_name: str) -> asyncio.AbstractEventLoop:
    # PYTHONASYNCIODEBUG=1 does exactly this at loop creation on 3.9-3.13
    # (BaseEventLoop.__init__: self.set_debug(coroutines._is_debug_mode())).
    loop = asyncio.new_event_loop()
    loop.set_debug(arm_name == "debug")
    return loop
