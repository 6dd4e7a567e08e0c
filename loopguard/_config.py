"""Reading loopguard's mode from arguments and the environment, with clear errors."""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

from ._errors import ConfigError

MODE_ENV = "LOOPGUARD"
LOG_FILE_ENV = "LOOPGUARD_LOG_FILE"

MODES = ("raise", "warn")
# Spellings accepted wherever a mode is read from text (env, CLI, ini); None means "off".
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


class Settings(NamedTuple):
    """What install() resolved: mode None means loopguard stays off."""

    mode: Optional[str]
    log_file: Optional[str]
    mode_source: str
    log_file_source: str = ""


def parse_mode_text(value: str, where: str) -> Optional[str]:
    """Turn an env/CLI/ini spelling into "raise", "warn" or None (off)."""
    key = value.strip().lower()
    if key not in _TEXT_VALUES:
        msg = f"Invalid loopguard mode {value!r} from {where}. Valid values: {VALID_TEXT}."
        raise ConfigError(msg)
    return _TEXT_VALUES[key]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        msg = f"Unknown loopguard mode {mode!r}. Valid modes: {', '.join(MODES)}."
        raise ConfigError(msg)
    return mode


def env_mode() -> tuple[bool, Optional[str]]:
    """(is_set, mode) from the LOOPGUARD environment variable; raises on an unknown value."""
    raw = os.environ.get(MODE_ENV)
    if raw is None or raw.strip() == "":
        return False, None
    return True, parse_mode_text(raw, f"the {MODE_ENV} environment variable")


def resolve(mode: Optional[str], log_file: Optional[str]) -> Settings:
    """Explicit arguments win over the environment; LOOPGUARD=0 switches off a bare install()."""
    env_is_set, from_env = env_mode()  # validated even when unused: a typo must not pass silently
    env_log_file = os.environ.get(LOG_FILE_ENV) or None
    chosen_log_file = log_file if log_file is not None else env_log_file
    log_file_source = (
        "install(log_file=...)"
        if log_file is not None
        else f"the {LOG_FILE_ENV} environment variable"
    )
    if mode is not None:
        return Settings(check_mode(mode), chosen_log_file, "install() argument", log_file_source)
    if env_is_set:
        return Settings(
            from_env, chosen_log_file, f"{MODE_ENV} environment variable", log_file_source
        )
    return Settings("raise", chosen_log_file, "default", log_file_source)
