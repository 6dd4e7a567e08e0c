"""Sending a record out: structlog, loopguard's JSON-lines file, the pytest plugin's listeners,
and the exception or warning that carries it to the user's code."""

from __future__ import annotations

import warnings
from typing import Any

from ._codes import CODES
from ._errors import LoopMismatchError
from ._log import app_log, report_sink_failure
from ._patterns import refine
from ._record import Record
from ._state import STATE


def emit(record: Record) -> None:
    """Send one record to structlog, the JSON-lines file and the plugin's listeners."""
    emit_fields(record.log_fields())


def emit_fields(fields: dict[str, Any], listeners: bool = True) -> None:
    """Send the logged fields of one record (its ``code`` and ``action`` among them) to
    structlog, the JSON-lines file and (``listeners``) the pytest plugin's summary.

    Each sink's failure is contained on its own (reported once on stderr): the others still
    get the record, and the caller goes on to raise or warn as if nothing had failed.
    """
    code = CODES[fields["code"]]
    level, event = code.level(fields["action"]), code.event
    app_log(level, event, **fields)
    sink = STATE.sink
    if sink is not None:
        sink.emit(level, event, fields)
    for listener in list(STATE.listeners) if listeners else ():
        try:
            listener({"event": event, **fields})
        except Exception as exc:
            report_sink_failure(repr(listener), exc)


def raise_record(record: Record) -> LoopMismatchError:
    """Log ``record`` and return its error, for the caller to raise (its traceback is the
    caller's).  Its cause is refined first (``_patterns``), as for every raised record."""
    record = refine(record)
    error = record.error()
    emit(record)
    return error


def warn_record(record: Record, stacklevel: int = 3) -> None:
    """Log ``record`` and emit its code's warning at the user's line (its cause refined
    first, as for every warned record)."""
    record = refine(record)
    message = record.message()
    emit(record)
    category: Any = record.spec.warning
    warning = category(message)
    if record.used_site is not None:
        # Point the warning at the user's line, not at a library's internals.
        filename, lineno = record.used_site
        warnings.warn_explicit(warning, category, filename, lineno)
    else:
        warnings.warn(warning, stacklevel=stacklevel)


def report(record: Record) -> None:
    """raise mode: raise the record's error; warn mode: warn.  (For the code's own action.)"""
    __tracebackhide__ = True
    if record.action == "raised":
        raise raise_record(record)
    warn_record(record, stacklevel=4)
