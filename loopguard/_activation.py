"""The one resolver: which mode loopguard runs in, and who asked for it.

Every way to turn loopguard on asks here and gets an :class:`Activation`, the mode (None:
off) and where it came from, in the words the pytest header and the messages use:

- pytest: ``--loopguard`` (raise) or ``--loopguard-mode=MODE`` > the ``LOOPGUARD``
  environment variable > the ini option ``asyncio_loopguard``; none of them: off;
- ``loopguard.install(mode)``: an explicit mode wins over everything; a bare ``install()``
  is off when ``LOOPGUARD`` says off (the kill switch) or when the pytest run was turned off
  explicitly, takes the mode of ``LOOPGUARD`` when it is set, and is ``raise`` otherwise;
- the start-up hook (``asyncio_loopguard.pth``): ``LOOPGUARD``;
- ``loopguard run --mode MODE``: that mode.

Every setting is validated even when another one wins: a typo never passes silently.  The
activation in effect is kept in ``STATE.activation``: the one answer to "who turned
loopguard on".
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from . import _config
from ._errors import ConfigError

# Who acts on an activation.
PYTEST = "pytest plugin"
INSTALL = "install()"
STARTUP_HOOK = "start-up hook"
RUN = "loopguard run"

# Where a mode came from, as messages say it.
FLAG = "the --loopguard option"
MODE_OPTION = "the --loopguard-mode option"
ENV = f"the {_config.MODE_ENV} environment variable"
INI_NAME = "asyncio_loopguard"
INI = f"the {INI_NAME} ini option"
UNSET = "no setting"


class Activation(NamedTuple):
    """A request to run loopguard in ``mode`` (None: off), and where it came from."""

    mode: Optional[str]
    source: str  # FLAG, ENV, "install()", ...
    entry: str  # who acts on it: PYTEST, INSTALL, STARTUP_HOOK or RUN
    call_site: Optional[tuple[str, int]] = None  # install(): the caller's file and line
    mode_from: Optional[str] = None  # a bare install(): the setting that decided its mode

    def describe(self) -> str:
        """``the --loopguard option``, ``install() at conftest.py:12``, ..."""
        text = self.source
        if self.call_site is not None:
            from . import _context, _sites  # only when shown: the path is relative to rootdir

            filename, line = self.call_site
            text += f" at {_sites.display_path(filename, _context.rootdir)}:{line}"
        if self.mode_from is not None:
            text += f", mode from {self.mode_from}"
        return text


# An explicit off of the running pytest session (--loopguard-mode=off, the ini option): a
# bare install() in conftest.py follows it, as it follows LOOPGUARD=0.
_pytest_off: Optional[Activation] = None


def for_pytest(flag: bool, mode_option: Optional[str], ini_value: Optional[str]) -> Activation:
    """The pytest run's mode: command line > LOOPGUARD > ini."""
    env_is_set, from_env = _config.env_mode()
    from_ini = _config.parse_mode_text(ini_value, INI) if ini_value else None
    if mode_option is not None:
        mode = _config.parse_mode_text(mode_option, MODE_OPTION)
        if flag and mode is None:
            msg = "--loopguard turns loopguard on and --loopguard-mode=off turns it off: give one."
            raise ConfigError(msg)
        return Activation(mode, MODE_OPTION, PYTEST)
    if flag:
        return Activation("raise", FLAG, PYTEST)
    if env_is_set:
        return Activation(from_env, ENV, PYTEST)
    if ini_value:
        return Activation(from_ini, INI, PYTEST)
    return Activation(None, UNSET, PYTEST)


def for_install(mode: Optional[str], call_site: tuple[str, int]) -> Activation:
    """``loopguard.install(mode)`` called at ``call_site``."""
    env_is_set, from_env = _config.env_mode()  # validated even when unused
    if mode is not None:
        call = Activation(None, "install()", INSTALL, call_site)
        return call._replace(mode=_config.parse_mode_text(mode, call.describe))
    if _pytest_off is not None:
        return Activation(None, "install()", INSTALL, call_site, _pytest_off.source)
    if env_is_set:
        return Activation(from_env, "install()", INSTALL, call_site, ENV)
    return Activation("raise", "install()", INSTALL, call_site)


def for_startup_hook() -> Activation:
    """``LOOPGUARD`` as the start-up hook reads it."""
    return Activation(_config.env_mode()[1], ENV, STARTUP_HOOK)


def for_run(mode: str) -> Activation:
    """``loopguard run --mode MODE``."""
    return Activation(_config.parse_mode_text(mode, "loopguard run --mode"), "loopguard run", RUN)


def pytest_session_started(activation: Activation) -> Optional[Activation]:
    """Remember a pytest session's explicit off for bare install() calls; returns what it
    replaces, which a session started inside another session's test puts back at its end."""
    global _pytest_off
    previous = _pytest_off
    explicit_off = activation.mode is None and activation.source != UNSET
    _pytest_off = activation if explicit_off else None
    return previous


def pytest_session_ended(previous: Optional[Activation]) -> None:
    global _pytest_off
    _pytest_off = previous
