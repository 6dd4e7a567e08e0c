"""Exceptions and warnings raised by loopguard."""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

# One place for the documentation address.  The repository's file (``docs/errors.md``) is for
# the tests and the generator; users are pointed at the docs site's page by its title, which
# needs no checkout, and at ``loopguard explain``, which needs nothing but the installed wheel.
DOCS_PAGE = "docs/errors.md"
DOCS_PAGE_TITLE = "Error codes"


def docs_link(code: str) -> str:
    """The code's section in the repository: ``docs/errors.md#lg101``."""
    return f"{DOCS_PAGE}#{code.lower()}"


def docs_section(code: str) -> str:
    """The code's section as a reader of the docs site finds it."""
    return f"{code} on the {DOCS_PAGE_TITLE} page of the docs"


def where_to_read(code: str) -> str:
    """Where to read about ``code``: the command first, it works offline from the text in the
    wheel (a pip user has no docs/ directory), then the page of the docs site."""
    return f"`loopguard explain {code}`, or {docs_section(code)}"


def background(code: str, what: str = "error") -> str:
    """The last line of every message."""
    return f"(Background on this {what}: {where_to_read(code)})"


class LoopguardError(Exception):
    """Base class of every error loopguard raises."""


class ConfigError(LoopguardError, ValueError):
    """A mode or environment value loopguard does not understand, or a log file it cannot open."""


class MissingDependencyError(LoopguardError, ImportError):
    """No integration could be enabled: the libraries loopguard guards are absent or too old."""


class LoopMismatchError(LoopguardError, RuntimeError):
    """A resource bound to one event loop was used on another.

    A subclass of :class:`RuntimeError`, like the error asyncio itself would raise later,
    so existing ``except RuntimeError`` handlers keep working.  Every fact in the message
    is also an attribute (and the whole log record is in :attr:`record`).
    """

    code: str
    resource: str
    url: Optional[str]
    pool_class: Optional[str]
    created_at: Optional[str]
    created_in: Optional[str]
    created_during: Optional[str]
    bound_during: Optional[str]
    bound_at: Optional[str]
    used_at: Optional[str]
    used_during: Optional[str]
    owner_loop_id: Optional[int]
    owner_loop_closed: Optional[bool]
    current_loop_id: Optional[int]

    def __init__(self, message: str, record: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.record = dict(record)
        for field in _RECORD_FIELDS:
            setattr(self, field, self.record.get(field))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the record when the error crosses a process boundary (pytest-xdist, multiprocessing).
        return (type(self), (self.args[0], self.record))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, resource={self.resource!r}, "
            f"created_at={self.created_at!r}, used_during={self.used_during!r}, "
            f"owner_loop_closed={self.owner_loop_closed!r})"
        )


_RECORD_FIELDS = (
    "code",
    "resource",
    "url",
    "pool_class",
    "created_at",
    "created_in",
    "created_during",
    "bound_during",
    "bound_at",
    "used_at",
    "used_during",
    "owner_loop_id",
    "owner_loop_closed",
    "current_loop_id",
)


class LoopguardWarning(UserWarning):
    """Base class of every warning loopguard emits."""


class LoopMismatchWarning(LoopguardWarning, RuntimeWarning):
    """``warn`` mode: a resource was used on a foreign loop.

    A SQLAlchemy engine is healed (it moves to the new loop); a raw asyncpg pool or connection
    cannot move, so asyncpg's own error follows the warning.
    """


class PoolCreatedOutsideLoopWarning(LoopguardWarning, RuntimeWarning):
    """An asyncpg Pool created with no event loop running is first used on a loop other than
    the one it captured (code LG102)."""


class LoopScopeMismatchWarning(LoopguardWarning):
    """pytest: an async fixture hands an engine, pool or connection from its pytest-asyncio
    loop to tests that run on another loop scope (found before those tests run, code LG105)."""


# Show the public name in tracebacks and pytest summaries: loopguard.LoopMismatchError.
for _cls in (
    LoopguardError,
    ConfigError,
    MissingDependencyError,
    LoopMismatchError,
    LoopguardWarning,
    LoopMismatchWarning,
    LoopScopeMismatchWarning,
    PoolCreatedOutsideLoopWarning,
):
    _cls.__module__ = "loopguard"
del _cls
