"""One module per guarded library; each refuses cleanly when its library is missing or too old."""

from __future__ import annotations

from typing import Protocol

from .._patching import PatchStack


class DidNotEnable(Exception):
    """The library an integration guards is missing or too old; the message says which."""


class Integration(Protocol):
    name: str

    def setup(self, patches: PatchStack) -> None:
        """Listen and patch; raise DidNotEnable before changing anything if it cannot run."""

    def teardown(self) -> None:
        """Remove listeners and forget tracked objects (patches are restored by the caller)."""


def all_integrations() -> list[Integration]:
    from ._asyncpg import AsyncpgIntegration
    from ._sqlalchemy import SQLAlchemyIntegration

    return [SQLAlchemyIntegration(), AsyncpgIntegration()]
