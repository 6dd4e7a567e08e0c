"""Structured log records: structlog for the application, a JSON-lines file of loopguard's own.

loopguard never configures structlog or logging: records go to ``structlog.get_logger("loopguard")``
and the application decides where they end up.  While structlog is left unconfigured, they go
to standard error instead (structlog's default would print them to stdout, which may be a
program's data), rendered as structlog's default would.  ``LOOPGUARD_LOG_FILE`` adds a sink that
belongs to loopguard alone (a logger built with ``structlog.wrap_logger``, so no global config
is touched).

A sink that fails (a full disk, a structlog processor that raises) must never replace the
error being reported or the user's own: each failure is contained where the sink is called and
said once per sink and process, in one line on stderr (``report_once``).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Optional

EVENT_LOOP_MISMATCH = "loopguard.loop_mismatch"
SCHEMA_VERSION = 1
APP_SINK = "the structlog logger 'loopguard'"
STDERR_SINK = "loopguard's logger to stderr (structlog is not configured)"

_stderr_lock = threading.RLock()
_stderr_logger: Any = None
_failures: dict[str, str] = {}  # what failed -> the line that said so, once per process


class _StandardError:
    """structlog's PrintLogger, but to whatever ``sys.stderr`` is at each record.

    pytest (capsys, its own capture) swaps ``sys.stderr``; a logger holding the stream it
    was built with would write to a stale one.
    """

    def msg(self, message: str) -> None:
        stream = sys.stderr
        if stream is None:  # pythonw, or a daemon that closed it: nowhere to say it
            return
        with _stderr_lock:
            print(message, file=stream, flush=True)

    # structlog calls the method named after the level.
    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def app_logger() -> tuple[str, Any]:
    """The sink the application's records go to, and its logger.

    ``structlog.get_logger("loopguard")`` once structlog is configured (the application's
    choice wins); until then a logger of loopguard's own that renders as structlog's default
    would, to stderr.  Decided per record: the application may configure structlog after
    loopguard was installed.
    """
    import structlog  # on first use: importing it takes tens of milliseconds

    if structlog.is_configured():
        return APP_SINK, structlog.get_logger("loopguard")
    global _stderr_logger
    if _stderr_logger is None:
        # No processors given: the proxy takes structlog's defaults at each record, so the
        # rendering is the one structlog would print.
        _stderr_logger = structlog.wrap_logger(_StandardError())
    return STDERR_SINK, _stderr_logger


def app_log(level: str, event: str, **fields: Any) -> None:
    """Send one record to the application's structlog (stderr while it is unconfigured).

    A failure is reported once and goes no further: it must not replace what is reported.
    """
    sink, logger = app_logger()
    try:
        getattr(logger, level)(event, **fields)
    except Exception as exc:
        report_sink_failure(sink, exc)


def report_sink_failure(sink: str, exc: Exception) -> None:
    """Say once per sink and process, in one line on stderr, that ``sink`` failed."""
    report_once(sink, exc, "records it cannot take are dropped")


def report_once(what: str, exc: Exception, consequence: str) -> None:
    """One line on stderr, the first time ``what`` fails in this process: no traceback, and
    never an exception, so loopguard's own errors, the user's, and the sinks that still work
    go on as if nothing had happened."""
    try:
        with _stderr_lock:
            if what in _failures:
                return
            error = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, always
            line = f"loopguard: {what} failed ({error}); {consequence} (said once per process)."
            _failures[what] = line
            stream = sys.stderr
            if stream is not None:
                print(line, file=stream, flush=True)
    except Exception:  # stderr itself is gone, or exc cannot be shown: nobody left to tell
        pass


def failures() -> list[str]:
    """The lines ``report_once`` has printed in this process, in order.

    Under pytest, stderr is captured per test and dropped when the test passes: the plugin
    repeats these lines in its summary.
    """
    with _stderr_lock:
        return list(_failures.values())


class _AppendOnlyFile:
    """Writes each line with one ``os.write`` on an O_APPEND descriptor.

    The kernel appends each write atomically at the end of the file, so several processes
    (pytest-xdist workers) can share one log file without interleaving records.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, (message + "\n").encode("utf-8"))

    # structlog calls the method named after the level.
    error = warning = info = msg

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class JsonLinesSink:
    """loopguard's own logger writing one JSON object per line to a file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = _AppendOnlyFile(path)
        import structlog

        self._logger = structlog.wrap_logger(
            self._file,
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(default=str, sort_keys=False),
            ],
            # Pinned, not taken from structlog's configuration: an application's filtering
            # wrapper class (its log level) must not drop loopguard's records from the file.
            wrapper_class=structlog.BoundLogger,
            context_class=dict,
            cache_logger_on_first_use=False,
        )

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        """Append one record; a failed write (a full disk) is reported once, never raised."""
        try:
            getattr(self._logger, level)(event, pid=os.getpid(), schema=SCHEMA_VERSION, **fields)
        except Exception as exc:
            report_sink_failure(f"the log file {self.path!r}", exc)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"<JsonLinesSink {self.path!r}>"
