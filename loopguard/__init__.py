"""loopguard: make asyncio event-loop misuse obvious.

Catches a pooled SQLAlchemy async engine used on an event loop other than the one its
connections belong to, before any I/O, and says which engine, where it was created,
which test bound it, which test uses it now, and how to fix it.
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
from ._install import install, is_installed, mode, uninstall

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
    "install",
    "is_installed",
    "mode",
    "uninstall",
)
