"""The likely causes of a loop mismatch and their fixes, as the messages say them.

A cause is chosen from the state of the owning loop and whether a test is running
(``likely_cause``); its words depend on what was misused (``causes_for(resource)``): the fix
for an engine is ``dispose()``, for an asyncpg pool ``close()``, for an object registered
with ``loopguard.track()`` whatever its owner does to release it.

Then, for every guard alike, ``_patterns.refine`` may name the pattern that made the loops
differ (Starlette's TestClient, anyio's pytest plugin, a loop per Celery task or
async_to_sync call, a wider-scoped fixture that created the object): those causes
(``PATTERNS``) are worded once, for any resource, with its ``Terms`` (``cause_for``).
"""

from __future__ import annotations

from typing import Optional

from ._cause_wording import Cause, Terms, standard_causes
from ._pattern_causes import PATTERNS
from ._primitive_causes import PRIMITIVE_NOUNS, primitive_causes
from ._resource_causes import (
    AIOHTTP_SESSION,
    ASYNCPG_CONNECTION,
    ASYNCPG_POOL,
    ENGINE,
    HELD_CONNECTION,
    HTTPX_CLIENT,
    PSYCOPG_POOL,
    REDIS_CLIENT,
)


def likely_cause(owner_state: str, in_test: bool) -> str:
    """``owner_state`` is ``LoopRef.state()``: closed, idle, running or inherited."""
    if owner_state == "running":
        return "running-loop"
    if owner_state == "inherited":
        return "forked-child"
    return f"{owner_state}-loop-{'test' if in_test else 'run'}"


# Codes whose records carry no ``cause``: one explanation for the code.
EXPLANATIONS = {
    "LG104": Cause(
        "the engine was disposed on an event loop other than the one its pooled connections "
        "belong to, or outside any loop: their loop could not close them, so loopguard closed "
        "their sockets directly.",
        "dispose the engine on the loop that used it, before that loop ends (`await "
        "engine.dispose()` at the end of the asyncio.run() job, or in the teardown of a fixture "
        "on the tests' loop).",
    ),
    "LG105": Cause(
        "an async fixture hands what it yields, bound to its pytest-asyncio loop, to tests "
        "that run on another loop scope: their use of it fails (an engine in warn mode is "
        "moved to each test's loop instead).",
        "run the tests on the fixture's loop (@pytest.mark.asyncio(loop_scope=...) on them, or "
        "asyncio_default_test_loop_scope), or give the fixture the tests' loop scope.",
    ),
    "LG106": Cause(
        "an event loop closed while the engine's pool still held connections bound to it: "
        "they can never be closed properly (a connection leak).",
        "`await engine.dispose()` before the loop ends: at the end of the asyncio.run() job, or "
        "in the teardown of a fixture on the tests' loop.",
    ),
}

# How the pattern causes name each resource; integrations add theirs with ``register``.
_TERMS: dict[str, Terms] = {
    "SQLAlchemy AsyncEngine": Terms(
        "engine", "`await engine.dispose()`", ", or build it with `poolclass=NullPool`"
    ),
    "asyncpg Pool": Terms("pool", "`await pool.close()`"),
    "asyncpg Connection": Terms("connection", "`await conn.close()`"),
    "httpx AsyncClient": Terms("client", "`await client.aclose()`"),
    "aiohttp ClientSession": Terms("session", "`await session.close()`"),
    "redis.asyncio client": Terms("client", "`await client.aclose()`"),
    "redis.asyncio connection": Terms("client", "`await client.aclose()`"),
}
_UNKNOWN_FIXTURE = "a fixture"  # `loopguard report` reads no fixture


# resource (as records name it) -> its causes; integrations add theirs with ``register``.
_BY_RESOURCE: dict[str, dict[str, Cause]] = {
    "SQLAlchemy AsyncEngine": ENGINE,
    "SQLAlchemy connection": HELD_CONNECTION,
    # A pool made by create_async_pool_from_url(): no engine around it, its own dispose().
    "SQLAlchemy pool": {
        key: Cause(
            cause.text.replace("the engine", "the pool").replace("engine", "pool"),
            cause.fix.replace("await engine.dispose()", "pool.dispose()")
            .replace("`engine.sync_engine.dispose(close=False)`", "`pool.dispose()`")
            .replace("engine", "pool"),
        )
        for key, cause in ENGINE.items()
    },
    "asyncpg Pool": ASYNCPG_POOL,
    "asyncpg Connection": ASYNCPG_CONNECTION,
    "httpx AsyncClient": HTTPX_CLIENT,
    "aiohttp ClientSession": AIOHTTP_SESSION,
    "redis.asyncio client": REDIS_CLIENT,
    # A held connection of no known pool (connected before install()).
    "redis.asyncio connection": REDIS_CLIENT,
    "psycopg_pool AsyncConnectionPool": PSYCOPG_POOL,
    **{resource: primitive_causes(noun) for resource, noun in PRIMITIVE_NOUNS.items()},
}


def register(resource: str, causes: dict[str, Cause], terms: Optional[Terms] = None) -> None:
    """``causes``: the resource's own words (any key, a pattern's too); ``terms``: how the
    pattern causes it has no words for name it (default: its resource name, "close it")."""
    _BY_RESOURCE[resource] = causes
    if terms is not None:
        _TERMS[resource] = terms


def terms_for(resource: str) -> Terms:
    return _TERMS.get(resource) or Terms(resource, "close it")


def cause_for(resource: str, key: str, created_by: Optional[str] = None) -> Optional[Cause]:
    """The cause ``key`` worded for ``resource``: its own words, else the pattern's; None for
    a key this loopguard does not know.  ``created_by``: the record's fixture, if any."""
    cause = causes_for(resource).get(key) or PATTERNS.get(key)
    if cause is None:
        return None
    terms = terms_for(resource)
    values = {
        "{noun}": terms.noun,
        "{release}": terms.release,
        "{alternative}": terms.alternative,
        "{created_by}": f"the {created_by}" if created_by else _UNKNOWN_FIXTURE,
    }
    text, fix = cause
    for placeholder, value in values.items():
        text, fix = text.replace(placeholder, value), fix.replace(placeholder, value)
    return Cause(text, fix)


def causes_for(resource: str) -> dict[str, Cause]:
    """The causes for ``resource``; an unknown resource gets the standard ones for "object"."""
    causes = _BY_RESOURCE.get(resource)
    if causes is None:
        causes = _BY_RESOURCE[resource] = standard_causes("object", "release it")
    return causes
