"""Structured log records: structlog for the application, a JSON-lines file of loopguard's own.

loopguard never configures structlog or logging: records go to ``structlog.get_logger("loopguard")``
and the application decides where they end up.  ``LOOPGUARD_LOG_FILE`` adds a sink that belongs
to loopguard alone (a logger built with ``structlog.wrap_logger``, so no global config is touched).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

EVENT_LOOP_MISMATCH = "loopguard.loop_mismatch"
SCHEMA_VERSION = 1


def app_logger() -> Any:
    import structlog  # on first use: importing it takes tens of milliseconds

    return structlog.get_logger("loopguard")


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
            cache_logger_on_first_use=False,
        )

    def emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        getattr(self._logger, level)(event, pid=os.getpid(), schema=SCHEMA_VERSION, **fields)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"<JsonLinesSink {self.path!r}>"
