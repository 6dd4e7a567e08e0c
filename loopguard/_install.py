"""install() / uninstall(): every patch and listener goes on and comes off as one unit."""

from __future__ import annotations

import sys
import warnings
from typing import Optional

from . import _activation, _config, _registry, _sites
from ._activation import Activation
from ._errors import ConfigError, LoopguardWarning, MissingDependencyError
from ._guards import Guards
from ._log import JsonLinesSink
from ._state import STATE
from .integrations import all_integrations

_guards: Optional[Guards] = None
NOTHING_TO_GUARD = "loopguard has nothing to guard: "
_applying = False  # integrations import their libraries, which may re-enter via _autoload


def install(mode: Optional[str] = None, *, log_file: Optional[str] = None) -> None:
    """Start guarding; idempotent: a second call updates the mode (when given) and log file.

    Args:
        mode: ``"raise"`` (the default) or ``"warn"``, in any spelling ``LOOPGUARD`` accepts;
            ``"off"`` makes the call do nothing. Wins over the ``LOOPGUARD`` environment
            variable. Without it, the call follows ``LOOPGUARD`` (``LOOPGUARD=0``: a no-op)
            or an explicit off of the pytest run, and keeps the mode of an installation in
            place.
        log_file: append JSON-lines records to this file (default: ``LOOPGUARD_LOG_FILE``).

    Raises:
        loopguard.ConfigError: unknown mode or ``LOOPGUARD`` value, or a log file that
            cannot be opened; nothing is patched then.
        loopguard.MissingDependencyError: none of the guarded libraries can be used.
    """
    caller = sys._getframe(1)
    activation = _activation.for_install(mode, (caller.f_code.co_filename, caller.f_lineno))
    if activation.mode is not None:
        apply(activation, log_file, keep_installed=mode is None)


def apply(
    activation: Activation, log_file: Optional[str] = None, *, keep_installed: bool = False
) -> None:
    """Install for ``activation``, or switch an installation to its mode.

    ``keep_installed``: an installation in place keeps its mode and source (a bare
    ``install()``, the start-up hook); only the log file follows the settings.
    """
    if activation.mode is None:
        raise ValueError(f"cannot install for an activation that is off: {activation}")
    setting = _config.log_file_setting(log_file)
    with STATE.lock:
        if _applying:
            return
        was_installed = STATE.installed
        current = STATE.sink
        # Opened before anything is patched: a bad path leaves nothing half-installed.
        sink = current if _same_file(current, setting) else _open_sink(setting)
        try:
            if not was_installed:
                _apply_integrations()
        except BaseException:
            if sink is not None and sink is not current:
                sink.close()
            raise
        if sink is not current:
            STATE.sink = sink
            if current is not None:
                current.close()
        if not (keep_installed and was_installed):
            STATE.activation = activation
            STATE.mode = activation.mode


def _apply_integrations() -> None:
    global _applying
    _applying = True
    try:
        _apply_each_integration()
    finally:
        _applying = False


def _apply_each_integration() -> None:
    global _guards
    _sites.reset_caches()
    guards = Guards()
    try:
        guards.start(all_integrations())
        if not guards.names():
            reasons = "; ".join(f"{name}: {why}" for name, why in guards.skipped.items())
            msg = f"{NOTHING_TO_GUARD}{reasons}."
            raise MissingDependencyError(msg)
    except BaseException:
        # Nothing half-installed: undo whatever the integrations that did start had done.
        guards.stop()
        raise
    _guards = guards
    STATE.enabled = guards.names()
    STATE.skipped = guards.skipped


def _same_file(sink: Optional[JsonLinesSink], setting: Optional[_config.LogFile]) -> bool:
    return (sink.path if sink else None) == (setting.path if setting else None)


def _open_sink(setting: Optional[_config.LogFile]) -> Optional[JsonLinesSink]:
    if setting is None:
        return None
    try:
        return JsonLinesSink(setting.path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        path, source = setting
        msg = f"Cannot open the loopguard log file {path!r} from {source}: {reason}."
        raise ConfigError(msg) from None


def _close_sink() -> None:
    current, STATE.sink = STATE.sink, None
    if current is not None:
        current.close()


def uninstall() -> None:
    """Remove every patch and listener and restore the originals exactly.

    Safe to call when loopguard is not installed: it then only warns that there was
    nothing to undo.
    """
    with STATE.lock:
        if not STATE.installed:
            warnings.warn(
                "loopguard.uninstall() was called but loopguard is not installed; nothing to undo.",
                LoopguardWarning,
                stacklevel=2,
            )
            return
        global _guards
        try:
            if _guards is not None:
                _guards.stop()
        finally:
            _guards = None
            _registry.clear_all()
            _close_sink()
            STATE.mode = None
            STATE.activation = None
            STATE.enabled = []
            STATE.skipped = {}


def is_installed() -> bool:
    """True while loopguard's patches and listeners are in place."""
    return STATE.installed


def mode() -> Optional[str]:
    """The active mode (``"raise"`` or ``"warn"``), or None when not installed."""
    return STATE.mode
