"""The patterns behind the loops (Starlette's TestClient, anyio's pytest plugin, a loop per
Celery task or async_to_sync call, a wider-scoped fixture), worded once for any resource.

``_patterns.refine`` chooses the pattern; ``_causes.cause_for`` fills in the resource's
``Terms`` and the fixture that created it.
"""

from __future__ import annotations

from ._cause_wording import RUN_ON_FIXTURE_LOOP, Cause

# Placeholders: {noun}, {release}, {alternative} (Terms), {created_by} (the record's fixture,
# "the session-scoped fixture 'engine' at conftest.py:12", or "a fixture").
_ASGI_TRANSPORT = (
    "or call the app on the test's own loop with "
    "`httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` from an async test"
)
_PER_TASK_FIX = (
    "create the {noun} inside the coroutine and {release} before it returns{alternative}, or "
    "run the coroutines on one long-lived loop"
)

PATTERNS: dict[str, Cause] = {
    "test-client-request": Cause(
        "Starlette's TestClient, used without `with`, runs the application on a new event "
        "loop for every request, in a thread of its own (an anyio blocking portal), while the "
        "{noun} is created once, outside the app's lifespan (at import, in a cache or in a "
        "fixture): it stays bound to the loop it was first used on.",
        "use `with TestClient(app) as client:` (one loop for the whole block) and create the "
        "{noun} in the app's lifespan, ending it with {release}; "
        + _ASGI_TRANSPORT
        + "{alternative}.",
    ),
    "test-client": Cause(
        "Starlette's TestClient runs the application on an event loop of its own, in a thread "
        "of its own (an anyio blocking portal), a new one for each `with TestClient(app)` "
        "block, while the {noun} outlives the block: it is created outside the app's lifespan "
        "(at import, in a cache or in a fixture), so it stays bound to the loop it was first "
        "used on.",
        "create the {noun} in the app's lifespan and end the lifespan with {release}: it then "
        "lives and dies with each `with TestClient(app)` block; "
        + _ASGI_TRANSPORT
        + "{alternative}.",
    ),
    "async-to-sync": Cause(
        "asgiref's async_to_sync (Django's sync views, commands and tasks calling async code) "
        "runs each call on a new event loop, in a thread of its own, when no loop runs in the "
        "caller's thread, while the {noun} is created once (at import or in a cache): it stays "
        "bound to the loop of the call that first used it.",
        _PER_TASK_FIX + " (an ASGI server's) instead of one async_to_sync() loop per call.",
    ),
    "celery-task": Cause(
        "each Celery task runs its coroutine with asyncio.run(), on a new event loop, while "
        "the {noun} is created once per worker (at import or in a cache): it stays bound to "
        "the loop of the first task that used it.",
        _PER_TASK_FIX + " per worker process instead of asyncio.run() per task.",
    ),
    "closed-loop-anyio": Cause(
        "the {noun} outlived the event loop it was first used on: it is cached (a module-level "
        "object or an @lru_cache factory) while anyio's pytest plugin runs each test on a new "
        "loop (it keeps a loop only while an async fixture of a wider scope holds it).",
        "create the {noun} in an async fixture and {release} in its teardown: function-scoped "
        "for one per test, or session-scoped (with a session-scoped `anyio_backend` fixture) "
        "to keep anyio's loop, and the {noun}, for every test{alternative}.",
    ),
    "closed-loop-fixture": Cause(
        "the {noun} is created by {created_by} and shared by its tests, but each test "
        "runs on a new event loop: the {noun} stays bound to the loop of the first test that "
        "used it, which is closed now.",
        "give the fixture the tests' scope (a new {noun} per test, with {release} in its "
        "teardown), or run every test on the fixture's loop: an async fixture with "
        '{release} in its teardown and loop_scope="session" (pytest-asyncio: with '
        "asyncio_default_test_loop_scope = session; anyio: with a session-scoped "
        "`anyio_backend`){alternative}.",
    ),
    "idle-loop-fixture": Cause(
        "it belongs to a loop that is still open but not running: the {noun} is created by "
        "{created_by}, whose loop scope is wider than the test's (the test runs on a loop "
        "of its own).",
        RUN_ON_FIXTURE_LOOP,
    ),
}
