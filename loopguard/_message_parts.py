"""The lines every report shares: when, where, the cause and fix, the background pointer."""

from __future__ import annotations

from typing import Optional

from ._cause_wording import Cause
from ._causes import cause_for
from ._errors import background
from ._loops import loop_name
from ._record import Record

_UNKNOWN_SITE = "(install it earlier: LOOPGUARD=1 or the pytest plugin)"


def _during(test: Optional[str]) -> str:
    return f"during {test}" if test else "outside any test"


def _cause(record: Record) -> Cause:
    cause = cause_for(record.resource, record.cause or "", record.created_by)
    return cause or Cause("unknown.", "see the documentation.")


def _used_now(record: Record) -> str:
    current = record.current_loop_id
    used_at = f", at {record.used_at}" if record.used_at else ""
    operation = f" ({record.operation})" if record.operation else ""
    return (
        f"  used now:      {_during(record.used_during)} on loop #{current}"
        f"{loop_name(current) if current is not None else ''}{used_at}{operation}"
    )


def _background(record: Record, what: str = "error") -> str:
    return "  " + background(record.code, what)


def _closing_lines(record: Record, cause: Cause) -> list[str]:
    """The lines every report ends with: where it is used now, the cause, the fix, the
    Background line."""
    return [
        _used_now(record),
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        _background(record),
    ]


def _created_line(record: Record, unknown: str) -> str:
    if not record.created_at:
        return unknown
    no_loop = ", no event loop running" if record.created_in_loop is False else ""
    return f"{record.created_at} in {record.created_in} ({_during(record.created_during)}{no_loop})"
