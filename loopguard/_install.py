"""install() / uninstall(): every patch and listener goes on and comes off as one unit."""

from __future__ import annotations

import warnings
from typing import Optional

from . import _config, _registry, _sites
from ._errors import ConfigError, LoopguardWarning, MissingDependencyError
from ._guards import Guards
from ._log import JsonLinesSink
from ._state import STATE
from .integrations import all_integrations

_guards: Optional[Guards] = None
_applying = False  # integrations import their libraries, which may re-enter via _autoload


def install(mode: Optional[str] = None, *, log_file: Optional[str] = None) -> None:
    """Start guarding; idempotent (a second call only updates the mode and log file).

    Args:
        mode: ``"raise"`` (default) or ``"warn"``. Wins over the ``LOOPGUARD`` environment
            variable; without it, ``LOOPGUARD=0`` makes this call a no-op.
        log_file: append JSON-lines records to this file (default: ``LOOPGUARD_LOG_FILE``).

    Raises:
        loopguard.ConfigError: unknown mode or ``LOOPGUARD`` value, or a log file that cannot
            be opened.
        loopguard.MissingDependencyError: none of the guarded libraries can be used.
    """
    settings = _config.resolve(mode, log_file)
    if settings.mode is None:
        return
    with STATE.lock:
        if _applying:
            return
        # Opened before anything is patched: a bad path leaves everything as it was.
        sink = _open_log_file(settings)
        if not STATE.installed:
            try:
                _apply_integrations()
            except BaseException:
                if sink is not None and sink is not STATE.sink:
                    sink.close()
                raise
        _set_log_file(sink)
        STATE.mode = settings.mode
        STATE.mode_source = settings.mode_source


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
            msg = f"loopguard has nothing to guard: {reasons}."
            raise MissingDependencyError(msg)
    except BaseException:
        # Nothing half-installed: undo whatever the integrations that did start had done.
        guards.stop()
        raise
    _guards = guards
    STATE.enabled = guards.names()
    STATE.skipped = guards.skipped


def _open_log_file(settings: _config.Settings) -> Optional[JsonLinesSink]:
    """The sink for ``settings.log_file``: the current one if it is that file already."""
    path = settings.log_file
    if not path:
        return None
    current = STATE.sink
    if current is not None and current.path == path:
        return current
    try:
        return JsonLinesSink(path)
    except OSError as exc:
        msg = (
            f"Cannot open the loopguard log file {path!r} from {settings.log_file_source}: "
            f"{exc.strerror or exc}."
        )
        raise ConfigError(msg) from None


def _set_log_file(sink: Optional[JsonLinesSink]) -> None:
    current = STATE.sink
    if current is sink:
        return
    STATE.sink = sink
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
            _set_log_file(None)
            STATE.mode = None
            STATE.mode_source = ""
            STATE.enabled = []
            STATE.skipped = {}


def is_installed() -> bool:
    """True while loopguard's patches and listeners are in place."""
    return STATE.installed


def mode() -> Optional[str]:
    """The active mode (``"raise"`` or ``"warn"``), or None when not installed."""
    return STATE.mode
