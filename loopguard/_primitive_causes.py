"""The likely causes of a misused asyncio primitive (LG111) and their fixes."""

from __future__ import annotations

from ._cause_wording import Cause

# asyncio's primitive classes as LG111 records name them, and what summaries count them as.
PRIMITIVE_NOUNS = {
    "asyncio.Lock": "lock",
    "asyncio.Event": "event",
    "asyncio.Condition": "condition",
    "asyncio.Semaphore": "semaphore",
    "asyncio.BoundedSemaphore": "semaphore",
    "asyncio.Queue": "queue",
    "asyncio.PriorityQueue": "queue",
    "asyncio.LifoQueue": "queue",
    "asyncio.Barrier": "barrier",
}


def primitive_causes(noun: str) -> dict[str, Cause]:
    """The causes for an asyncio ``noun`` (lock, event, queue, ...), LG111.  The fix is always
    the same idea: create it inside the loop that uses it."""
    inside = f"create the {noun} inside the loop that uses it"
    return {
        "outside-loop": Cause(
            f"the {noun} was created with no event loop running (at import time, as a module "
            "global or class attribute, or in a sync function), so Python 3.9 bound it to the "
            "loop asyncio.get_event_loop() returned then; asyncio.run() and pytest-asyncio run "
            "coroutines on a new loop, where it cannot wait.",
            f"{inside}: in the coroutine (or async fixture) that needs it, or lazily on first "
            f"use from async code (Python 3.10+ binds an unused {noun} to the first loop that "
            "waits on it).",
        ),
        "closed-loop-test": Cause(
            f"the {noun} outlived the event loop asyncio bound it to: it is created once (at "
            "import time, as a module global or class attribute, or in a cached object) while "
            "pytest-asyncio gives each test a new loop.",
            f"{inside}: in the test, in an async fixture on the test's loop, or in the object "
            "the test creates; or run every test that uses it on one loop (loop_scope=).",
        ),
        "closed-loop-run": Cause(
            f"the {noun} outlived the event loop asyncio bound it to: a module-level or cached "
            f"{noun} is shared by several asyncio.run() calls (one per job or command), each "
            "with a new loop.",
            f"{inside}: in the coroutine asyncio.run() runs (or in an object created there), "
            "or run every job on one long-lived loop.",
        ),
        "idle-loop-test": Cause(
            "it is bound to a loop that is still open but not running: typically a fixture with "
            "a wider loop scope (session, package, module or class) than the test, or a "
            f"module-level {noun} shared by tests on different loop scopes.",
            f"{inside} (in the test, or in a fixture with the test's loop scope), or run the "
            'test on that loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
            "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope).",
        ),
        "idle-loop-run": Cause(
            "it is bound to another event loop that is still open but not running.",
            f"{inside}: one {noun} per loop.",
        ),
        "running-loop": Cause(
            "it is bound to another event loop that is running right now, most likely in "
            "another thread: asyncio primitives work on one loop and are not thread-safe.",
            f"give each thread's loop its own {noun}, created inside that loop, or hand the "
            "work to its loop (asyncio.run_coroutine_threadsafe()); between threads, use "
            "threading's primitives or queue.Queue.",
        ),
        "forked-child": Cause(
            f"this process was forked from one whose event loop the {noun} is bound to "
            "(os.fork() or multiprocessing's fork start method).",
            f"{inside}, in the child, or use the spawn start method.",
        ),
    }
