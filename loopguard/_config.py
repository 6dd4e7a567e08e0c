"""loopguard's settings as text: the spellings of a mode, the environment variables, the log file.

Reading a value and saying clearly what is wrong with it is done here; which setting wins is
decided in ``_activation``.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional, Union

from ._errors import ConfigError

MODE_ENV = "LOOPGUARD"
LOG_FILE_ENV = "LOOPGUARD_LOG_FILE"

MODES = ("raise", "warn")
# Spellings accepted wherever a mode is read (env, CLI, ini, install()); None means "off".
_TEXT_VALUES: dict[str, Optional[str]] = {
    "1": "raise",
    "true": "raise",
    "on": "raise",
    "raise": "raise",
    "warn": "warn",
    "0": None,
    "false": None,
    "off": None,
}
VALID_TEXT = "1, true, on, raise, warn, 0, false, off"
# The off spellings; asyncio_loopguard.pth repeats them so that it imports nothing for them.
OFF_TEXT = tuple(text for text, mode in _TEXT_VALUES.items() if mode is None)


def parse_mode_text(value: object, where: Union[str, Callable[[], str]]) -> Optional[str]:
    """Turn a spelling into "raise", "warn" or None (off); ``where`` names its source (a
    callable: only worked out for the error)."""
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in _TEXT_VALUES:
        source = where() if callable(where) else where
        msg = f"Invalid loopguard mode {value!r} from {source}. Valid values: {VALID_TEXT}."
        raise ConfigError(msg)
    return _TEXT_VALUES[key]


def env_mode() -> tuple[bool, Optional[str]]:
    """(is_set, mode) from the LOOPGUARD environment variable; raises on an unknown value."""
    raw = os.environ.get(MODE_ENV)
    if raw is None or raw.strip() == "":
        return False, None
    return True, parse_mode_text(raw, f"the {MODE_ENV} environment variable")


class LogFile(NamedTuple):
    """The JSON-lines file to append records to, and where that setting came from."""

    path: str
    source: str


def log_file_setting(log_file: Optional[str]) -> Optional[LogFile]:
    """``install(log_file=...)`` wins over ``LOOPGUARD_LOG_FILE``; empty means no file."""
    if log_file is not None:
        return LogFile(log_file, "install(log_file=...)") if log_file else None
    from_env = os.environ.get(LOG_FILE_ENV)
    return LogFile(from_env, f"the {LOG_FILE_ENV} environment variable") if from_env else None
