"""One module per guarded library; each refuses cleanly when its library is missing or too old.

Every integration, built-in or third-party, is an ``Integration`` subclass (``_base``): a
library, the versions it supports, a table of patch points.  Third-party integrations are
found through the entry-point group ``loopguard.integrations``.
"""

from __future__ import annotations

from ._base import DidNotEnable, Integration, Patch

# The built-in integrations, in the order they are enabled: the core's loop hooks (loop close,
# names for anyio's loops) first.
BUILTIN = (
    "loopguard._loop_close:AsyncioLoops",
    "loopguard._loop_close:UvloopLoops",
    "loopguard._anyio_loops:AnyioPortals",
    "loopguard._anyio_loops:AnyioTestRunner",
    "loopguard.integrations._sqlalchemy:SQLAlchemyIntegration",
    "loopguard.integrations._sqlalchemy_held:SQLAlchemyHeldIntegration",
    "loopguard.integrations._sqlalchemy_held:DbapiStreamCursors",
    "loopguard.integrations._sqlalchemy_held:PsycopgStreamCursors",
    "loopguard.integrations._sqlalchemy_held:AiosqliteStreamCursors",
    "loopguard.integrations._asyncpg:AsyncpgIntegration",
    "loopguard.integrations._httpx:HttpxIntegration",
    "loopguard.integrations._aiohttp:AiohttpIntegration",
    "loopguard.integrations._redis:RedisIntegration",
    "loopguard.integrations._psycopg_pool:PsycopgPoolIntegration",
    "loopguard.integrations._primitives:AsyncioPrimitivesIntegration",
)
ENTRY_POINT_GROUP = "loopguard.integrations"

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "DidNotEnable",
    "Integration",
    "Patch",
    "all_integrations",
]


def all_integrations() -> list[Integration]:
    """A new instance of every built-in integration, then of every third-party one.

    Raises:
        loopguard.ConfigError: an entry point that does not name an Integration subclass.
    """
    from .._errors import ConfigError
    from . import _base, _entry_points

    found = [_base.load(spec)() for spec in BUILTIN]
    for name, spec in _entry_points.entries(ENTRY_POINT_GROUP):
        try:
            found.append(_base.load(spec)())
        except Exception as exc:  # a broken third-party package: say which one
            msg = f"the entry point {name!r} of the group {ENTRY_POINT_GROUP} names {spec}, "
            msg += str(exc) if isinstance(exc, TypeError) else f"which fails: {exc!r}"
            raise ConfigError(msg) from None
    return found
