"""What a cause is, and the wording every resource's causes share.

A ``Cause`` is the "likely cause:" and "fix:" of a message; ``Terms`` say how the pattern
causes (``_pattern_causes``) name one resource; ``standard_causes`` words the causes of any
loop-bound object that has no table of its own.
"""

from __future__ import annotations

from typing import NamedTuple


class Cause(NamedTuple):
    text: str  # "likely cause:" in the message
    fix: str  # "fix:" in the message


class Terms(NamedTuple):
    """How the pattern causes speak of one resource."""

    noun: str  # "engine"
    release: str  # what frees it on its loop: "`await engine.dispose()`"
    alternative: str = ""  # a way it may cross loops at all: ", or build it with ..."


RUN_ON_FIXTURE_LOOP = (
    'run the test on the fixture\'s loop (`@pytest.mark.asyncio(loop_scope="session")`, or '
    "asyncio_default_test_loop_scope equal to asyncio_default_fixture_loop_scope), or give "
    "the {noun} fixture the test's loop scope."
)


def standard_causes(noun: str, release: str) -> dict[str, Cause]:
    """The causes for any loop-bound ``noun`` (a client, a lock, ...) that ``release`` frees.

    ``release`` completes "…, and {release} before that loop ends", e.g.
    "close it (`await client.aclose()`)".
    """
    return {
        "closed-loop-test": Cause(
            f"the {noun} outlived the event loop it was first used on: it is cached (a "
            "module-level object or an @lru_cache factory) while pytest-asyncio gives each test "
            "a new loop.",
            f"create the {noun} in a fixture on the test's loop and {release} in its teardown, "
            "or run every test that uses it on one loop (loop_scope=).",
        ),
        "closed-loop-run": Cause(
            f"the {noun} outlived the event loop it was first used on: a module-level or cached "
            f"{noun} is shared by several asyncio.run() calls (one per job or command), each "
            "with a new loop.",
            f"create the {noun} inside each job and {release} before the job returns, or run "
            "every job on one long-lived loop.",
        ),
        "idle-loop-test": Cause(
            "it belongs to a loop that is still open but not running: typically a fixture with "
            "a wider loop scope (session, package, module or class) than the test that uses it.",
            RUN_ON_FIXTURE_LOOP.format(noun=noun),
        ),
        "idle-loop-run": Cause(
            "it belongs to another event loop that is still open but not running.",
            f"use each {noun} on one loop only: one {noun} per loop, and {release} on that loop.",
        ),
        "running-loop": Cause(
            "it belongs to another event loop that is running right now, most likely in another "
            "thread.",
            f"give each thread's loop its own {noun}, or run the work on its loop "
            "(asyncio.run_coroutine_threadsafe()).",
        ),
        "forked-child": Cause(
            f"this process was forked from one whose event loop owns the {noun} (os.fork() or "
            "multiprocessing's fork start method).",
            f"create a new {noun} in the child, after the fork, or use the spawn start method.",
        ),
    }
