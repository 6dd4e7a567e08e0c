"""One module per guarded library; each refuses cleanly when its library is missing or too old.

Every integration, built-in or third-party, is an ``Integration`` subclass (``_base``): a
library, the versions it supports, a table of patch points.  Third-party integrations are
found through the entry-point group ``loopguard.integrations``.
"""

from __future__ import annotations

from ._base import DidNotEnable, Integration, Patch

# The built-in integrations, in the order they are enabled: the core's loop hooks first.
BUILTIN = (
    "loopguard._loop_close:AsyncioLoops",
    "loopguard._loop_close:UvloopLoops",
    "loopguard.integrations._sqlalchemy:SQLAlchemyIntegration",
    "loopguard.integrations._sqlalchemy_held:SQLAlchemyHeldIntegration",
    "loopguard.integrations._sqlalchemy_held:DbapiStreamCursors",
    "loopguard.integrations._sqlalchemy_held:PsycopgStreamCursors",
    "loopguard.integrations._sqlalchemy_held:AiosqliteStreamCursors",
    "loopguard.integrations._asyncpg:AsyncpgIntegration",
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
    """A new instance of every built-in integration, then of every third-party one."""
    from . import _base, _entry_points

    specs = [*BUILTIN, *_entry_points.specs(ENTRY_POINT_GROUP)]
    return [_base.load(spec)() for spec in specs]
