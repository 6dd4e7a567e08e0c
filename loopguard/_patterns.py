"""What made the loops differ: the pattern behind a mismatch, when it can be named.

``likely_cause`` says how the owning loop stands (closed, idle, running) and whether a test
runs; ``refine`` then looks at what is known about the two loops and the code around the
use, and names the pattern where it recognises one:

- a loop made by Starlette's TestClient (``_anyio_loops`` names them): ``test-client-request``
  (used without ``with``: a loop per request) or ``test-client`` (a ``with`` block's loop);
- a loop per task, from the frames of the use: asgiref's ``async_to_sync`` starting a loop
  for the call (``async-to-sync``), a Celery task (``celery-task``);
- an object created by a fixture of a wider scope than the function (``_context`` gives the
  fixture at creation): ``closed-loop-fixture``, ``idle-loop-fixture``;
- anyio's pytest plugin made the loops: ``closed-loop-anyio``.

Every guard gets this: ``_emit`` refines each record it raises or warns with, before the
message is written and the record logged.  It runs only then, on the slow path: two dict
lookups for the loops and at most one bounded walk over the stack.
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Optional

from ._context import fixture_scope
from ._loops import loop_kind
from ._record import Record
from ._sites import _parent_greenlet_frame

# What made a loop (``_loops.name_loop(..., kind=)``).
PYTEST_ASYNCIO = "pytest-asyncio"
ANYIO_TEST = "anyio-test"  # anyio's pytest plugin
TEST_CLIENT = "test-client"  # a `with TestClient(app)` block's loop
TEST_CLIENT_REQUEST = "test-client-request"  # TestClient without `with`: a loop per request
ANYIO_PORTAL = "anyio-portal"  # any other anyio blocking portal

# The causes a pattern may explain better; the others (forked-child, outside-loop) stand.
_REFINABLE = frozenset(
    {"closed-loop-test", "closed-loop-run", "idle-loop-test", "idle-loop-run", "running-loop"}
)
_FIXTURE = {"closed-loop-test": "closed-loop-fixture", "idle-loop-test": "idle-loop-fixture"}
# asgiref's functions that run an async_to_sync call on a loop of its own: new_loop_wrap
# (3.8+, under asyncio.run()), _run_event_loop (before).  main_wrap alone is no sign: it also
# runs the call on an outer loop that is already running.
_ASYNC_TO_SYNC_LOOPS = frozenset({"new_loop_wrap", "_run_event_loop"})
MAX_FRAMES = 160  # a guard's frames, SQLAlchemy's greenlet bridge, the loop's, a task runner's


def refine(record: Record) -> Record:
    """``record`` with its ``cause`` naming the pattern behind it, where one is recognised."""
    key = record.cause
    if key not in _REFINABLE:
        return record
    refined = _pattern(record, key)
    return record.replace(cause=refined) if refined is not None else record


def _pattern(record: Record, key: str) -> Optional[str]:
    kinds = (loop_kind(record.current_loop_id), loop_kind(record.owner_loop_id))
    for kind in kinds:  # the loop in use first
        if kind in (TEST_CLIENT_REQUEST, TEST_CLIENT):
            return kind
    if key != "running-loop":
        runner = task_runner(sys._getframe(2))
        if runner is not None:
            return runner
    scope = fixture_scope(record.created_by)
    if key in _FIXTURE and scope is not None and scope != "function":
        return _FIXTURE[key]
    if key == "closed-loop-test" and ANYIO_TEST in kinds:
        return "closed-loop-anyio"
    return None


def _package_dir(name: str) -> Optional[str]:
    file = getattr(sys.modules.get(name), "__file__", None)
    return os.path.dirname(file) + os.sep if file else None


def task_runner(frame: Optional[FrameType]) -> Optional[str]:
    """The runner that gave this call its own loop, from the frames around it: asgiref's
    async_to_sync (a new loop for the call), a Celery task; None for neither.  The walk
    continues past SQLAlchemy's greenlet bridge, into the coroutines that await it."""
    sync_module = sys.modules.get("asgiref.sync")
    asgiref_sync = getattr(sync_module, "__file__", None)
    celery = _package_dir("celery")
    if asgiref_sync is None and celery is None:
        return None  # neither is imported: nothing to look for
    hopped = False
    for _ in range(MAX_FRAMES):
        if frame is None:
            if hopped:
                return None
            frame, hopped = _parent_greenlet_frame(), True
            if frame is None:
                return None
        code = frame.f_code
        if code.co_filename == asgiref_sync and code.co_name in _ASYNC_TO_SYNC_LOOPS:
            return "async-to-sync"
        if celery is not None and code.co_filename.startswith(celery):
            return "celery-task"
        frame = frame.f_back
    return None
