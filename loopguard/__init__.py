"""loopguard: make asyncio event-loop misuse obvious.

Catches a pooled SQLAlchemy async engine used on an event loop other than the one its
connections belong to, before any I/O, and says which engine, where it was created,
which test bound it, which test uses it now, and how to fix it.

PYTEST_DONT_REWRITE: with ``LOOPGUARD`` set, the start-up hook imports this package before
pytest marks the plugin's package for assertion rewriting; this marker, pytest's own opt-out,
keeps pytest from warning that it cannot rewrite it (an error under ``filterwarnings = error``).
"""

from __future__ import annotations

from ._errors import (
    ConfigError,
    LoopguardError,
    LoopguardWarning,
    LoopMismatchError,
    LoopMismatchWarning,
    LoopScopeMismatchWarning,
    MissingDependencyError,
    PoolCreatedOutsideLoopWarning,
)

# install() and friends load the machinery (structlog, asyncio, typing, ...) on first use,
# so that a bare ``import loopguard`` stays cheap (issue 5: under 5 ms).
_LAZY = {
    "install": "_install",
    "uninstall": "_install",
    "is_installed": "_install",
    "mode": "_install",
    "track": "_api",
    "check": "_api",
    "unbind": "_api",
}
TYPE_CHECKING = False
if TYPE_CHECKING:  # type checkers see the real signatures
    from ._api import check, track, unbind
    from ._install import install, is_installed, mode, uninstall


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is not None:
        import importlib

        value = getattr(importlib.import_module(f".{module_name}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'loopguard' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = (
    "ConfigError",
    "LoopMismatchError",
    "LoopMismatchWarning",
    "LoopScopeMismatchWarning",
    "PoolCreatedOutsideLoopWarning",
    "LoopguardError",
    "LoopguardWarning",
    "MissingDependencyError",
    "__version__",
    "check",
    "install",
    "is_installed",
    "mode",
    "track",
    "unbind",
    "uninstall",
)
