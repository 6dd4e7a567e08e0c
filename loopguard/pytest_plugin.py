"""pytest plugin (entry point ``asyncio_loopguard``).

Mode precedence: ``--loopguard`` (raise) or ``--loopguard-mode=MODE`` > ``LOOPGUARD``
environment variable > ini option ``asyncio_loopguard``.  Installs before conftest files are
imported, so module-level engines created by them get a creation site.  A
``loopguard.install()`` in ``conftest.py`` (or a test module's body) gets the same header,
summary and loop-scope checks.  The session leaves loopguard as it found it: installed by
``loopguard run`` or the start-up hook before pytest started, it stays installed.  Off: every
hook returns at once and nothing is patched.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Any, Optional

import pytest

from . import _activation, _autoload, _context, _install, _log
from ._activation import Activation
from ._codes import primitive_noun
from ._errors import ConfigError, MissingDependencyError
from ._log import EVENT_LOOP_MISMATCH
from ._state import STATE

INI_NAME = _activation.INI_NAME


class _Session:
    """What loopguard does in one pytest session."""

    def __init__(self) -> None:
        self.found = STATE.activation  # installed before the session, by whom: put back at the end
        self.collector: Optional[_Collector] = None  # set while the session guards
        self.previous_off: Optional[Activation] = None  # an outer session's (pytester in-process)
        self.nothing_to_guard: Optional[str] = None  # the header when it could not install
        self.header: Optional[str] = None  # the status the header printed


_session_key = pytest.StashKey[_Session]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopguard")
    group.addoption(
        "--loopguard",
        action="store_true",
        default=False,
        dest="loopguard",
        help="guard SQLAlchemy async engines and asyncpg pools and connections against use on "
        "a foreign event loop, in raise mode (the same as --loopguard-mode=raise).",
    )
    group.addoption(
        "--loopguard-mode",
        action="store",
        default=None,
        dest="loopguard_mode",
        metavar="MODE",
        help="raise, warn or off: guard in this mode, or not at all (off also wins over "
        "LOOPGUARD, the ini option and a bare loopguard.install() in conftest.py).",
    )
    parser.addini(
        INI_NAME,
        "loopguard's mode for every run of the project: raise, warn or off "
        "(LOOPGUARD and the command line win over it).",
        default=None,
    )


def _resolve(config: pytest.Config, flag: bool, mode_option: Optional[str]) -> Activation:
    try:
        return _activation.for_pytest(flag, mode_option, config.getini(INI_NAME))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def _start(config: pytest.Config, activation: Activation) -> None:
    session = _Session()
    config.stash[_session_key] = session
    if not config.pluginmanager.has_plugin(_ADOPT_PLUGIN):
        config.pluginmanager.register(_AdoptOnCollect(), _ADOPT_PLUGIN)
    session.previous_off = _activation.pytest_session_started(activation)
    # Lets a loopguard.install() from conftest.py attribute records to tests, too.
    _context.in_pytest = True
    _autoload.hand_over()  # the start-up hook's finder: this plugin decides under pytest
    if activation.mode is None:
        _stand_down_start_up_hook(session)
        return
    # A pytest started by another pytest's test inherits that test's PYTEST_CURRENT_TEST
    # until its own first test starts: it would be blamed for engines created at import.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    # An explicit install(mode) or `loopguard run` before pytest started wins over LOOPGUARD
    # and the ini option; only the command line overrides it.
    found = session.found
    explicit_before = found is not None and found.entry in (_activation.INSTALL, _activation.RUN)
    command_line = activation.source in (_activation.FLAG, _activation.MODE_OPTION)
    try:
        _install.apply(activation, keep_installed=explicit_before and not command_line)
    except ConfigError as exc:  # a log file that cannot be opened
        raise pytest.UsageError(str(exc)) from None
    except MissingDependencyError as exc:
        # Asked for on the command line: a mistake to report.  Through LOOPGUARD (exported for
        # a whole CI) or the ini option: a suite that uses neither library runs as usual.
        reasons = str(exc).replace(_install.NOTHING_TO_GUARD, "", 1)
        if command_line:
            msg = f"{activation.source} asks for loopguard, but it has nothing to guard: {reasons}"
            raise pytest.UsageError(msg) from None
        session.nothing_to_guard = (
            f"loopguard: off, nothing to guard ({activation.source} asks for it): {reasons}"
        )
        return
    _guard(config, session)


def _stand_down_start_up_hook(session: _Session) -> None:
    """--loopguard-mode=off beats the LOOPGUARD start-up hook that installed already."""
    found = STATE.activation
    if found is not None and found.entry == _activation.STARTUP_HOOK:
        _install.uninstall()
        session.found = None


def _guard(config: pytest.Config, session: _Session) -> None:
    """Header, attribution, summary and loop-scope checks for the rest of the session."""
    _context.rootdir = str(config.rootpath)
    session.collector = _Collector()
    _stop_adopting(config)
    STATE.listeners.append(session.collector)
    from . import _pytest_scopes  # pytest-asyncio's loops named; LG105 before tests run

    _pytest_scopes.register(config)


def _adopt(config: pytest.Config) -> None:
    """loopguard.install() ran after the session started (conftest.py, a test module's body):
    the session guards from here on as if its settings had asked for it."""
    session = config.stash.get(_session_key, None)
    if session is not None and session.collector is None and STATE.installed:
        _guard(config, session)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # Before conftest.py files are imported: engines they create get their creation site.
    namespace = early_config.known_args_namespace
    _start(early_config, _resolve(early_config, namespace.loopguard, namespace.loopguard_mode))


def pytest_configure(config: pytest.Config) -> None:
    # An xdist worker: its records say which one it is.  Taken from the config, not from
    # PYTEST_XDIST_WORKER, which a pytest or a script started by a worker's test inherits.
    workerinput = getattr(config, "workerinput", None)
    _context.worker = workerinput.get("workerid") if workerinput else None
    if _session_key not in config.stash:
        # Reached when the plugin was loaded after the early hook (e.g. ``-p``).
        flag, mode_option = config.getoption("loopguard"), config.getoption("loopguard_mode")
        _start(config, _resolve(config, flag, mode_option))
    _adopt(config)  # the initial conftest.py files have been imported


_ADOPT_PLUGIN = "loopguard-adopt-on-collect"


class _AdoptOnCollect:
    """Plugin, registered while the session does not guard: a conftest.py further down, or a
    test module's body, may call loopguard.install().  Unregistered once the session guards
    (``_guard``): a hook per collected test costs, and would have nothing left to do."""

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        _adopt(item.config)

    def __repr__(self) -> str:
        return "<loopguard: adopts an install() made during collection>"


def _stop_adopting(config: pytest.Config) -> None:
    manager = config.pluginmanager
    plugin = manager.get_plugin(_ADOPT_PLUGIN)
    if plugin is not None:
        manager.unregister(plugin, _ADOPT_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    _context.in_pytest = False
    _context.worker = None
    session = config.stash.get(_session_key, None)
    if session is None:
        return
    _activation.pytest_session_ended(session.previous_off)
    collector = session.collector
    if collector is None:
        return
    if collector in STATE.listeners:
        STATE.listeners.remove(collector)
    if STATE.installed:
        if session.found is None:
            _install.uninstall()
        else:  # e.g. installed by the start-up hook before pytest started: left as found
            _install.apply(session.found)
    _context.rootdir = None


# -- pytest-xdist: workers guard, the controller summarises --------------------------------
# Every worker loads this plugin with the controller's options, so each one guards its own
# tests and appends to the same LOOPGUARD_LOG_FILE (single O_APPEND writes keep lines whole).
# The terminal summary is the controller's: each worker hands its records over in
# ``workeroutput`` when it finishes, and the controller adds them to its own collector.
# ``optionalhook``: without xdist installed these hooks are never called and never checked.
WORKEROUTPUT_KEY = "loopguard_records"
WORKEROUTPUT_FAILURES_KEY = "loopguard_failures"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    collector = _collector(node.config)
    workeroutput = getattr(node, "workeroutput", {})
    records = workeroutput.get(WORKEROUTPUT_KEY)
    if collector is not None and records:
        collector.records.extend(records)
    if collector is not None:
        collector.worker_failures.extend(workeroutput.get(WORKEROUTPUT_FAILURES_KEY, ()))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    collector = _collector(session.config)
    if workeroutput is None or collector is None:
        return  # not an xdist worker, or loopguard is off
    # execnet carries plain values only; the records are plain already (log_fields), the
    # JSON round trip makes sure of it whatever a future field holds.
    workeroutput[WORKEROUTPUT_KEY] = json.loads(json.dumps(collector.records, default=str))
    workeroutput[WORKEROUTPUT_FAILURES_KEY] = collector.failures()


def _collector(config: pytest.Config) -> Optional[_Collector]:
    session = config.stash.get(_session_key, None)
    return session.collector if session is not None else None


def _status(config: pytest.Config) -> str:
    """The header line: off, or the mode, who asked for it and what is guarded."""
    session = config.stash.get(_session_key, None)
    if session is not None and session.nothing_to_guard is not None:
        return session.nothing_to_guard
    activation = STATE.activation
    if _collector(config) is None or activation is None:
        return "loopguard: off"
    guarding = ", ".join(STATE.enabled) or "nothing"
    return f"loopguard: mode={STATE.mode} (from {activation.describe()}), guarding {guarding}"


def pytest_report_header(config: pytest.Config) -> str:
    session = config.stash.get(_session_key, None)
    status = _status(config)
    if session is not None:
        session.header = status
    return status


def pytest_report_collectionfinish(config: pytest.Config) -> list[str]:
    # loopguard.install() in a conftest.py further down or a test module's body ran after
    # the header was printed: say so once collection is done.
    session = config.stash.get(_session_key, None)
    status = _status(config)
    return [status] if session is not None and session.header not in (None, status) else []


class _Collector:
    """Keeps every mismatch record of the run for the terminal summary."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.worker_failures: list[str] = []  # xdist: the workers' failed sinks
        self._failures_before = len(_log.failures())  # said before this session began

    def __call__(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def failures(self) -> list[str]:
        """What failed in this session (log sinks): this process's lines, then the workers'."""
        lines = _log.failures()[self._failures_before :] + self.worker_failures
        return list(dict.fromkeys(lines))

    def __repr__(self) -> str:  # names this sink if it ever fails
        return "the pytest plugin's summary"

    def groups(self, mismatches: bool = True) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
        """Records grouped by code and engine: the mismatches, or every other event."""
        grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            if (record.get("event") == EVENT_LOOP_MISMATCH) is not mismatches:
                continue
            # An engine's URL, an object's name, or what an asyncio primitive is.
            what = record.get("url") or record.get("name") or record.get("resource")
            key = (record["code"], record.get("created_at"), record.get("created_in"), what)
            grouped[key].append(record)
        return grouped


def _noun(resource: Any) -> str:
    """What the summary counts: engines, pools, connections, clients, sessions, locks,
    queues..., or other objects."""
    primitive = primitive_noun(resource)
    if primitive is not None:
        return primitive
    text = str(resource or "")
    for noun in ("engine", "pool", "connection", "client", "session"):
        if text.lower().endswith(noun):
            return noun
    return "object"


def _test_name(during: Optional[str]) -> str:
    # PYTEST_CURRENT_TEST reads "nodeid (phase)"; the summary lists node ids.
    return during.rsplit(" (", 1)[0] if during else "outside any test"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    collector = _collector(config)
    if collector is None:
        return
    failures = collector.failures()
    if not collector.records and not failures:
        return
    terminalreporter.section("loopguard", sep="=", yellow=True)
    _summarise_mismatches(terminalreporter, collector.groups())
    _summarise_other_records(terminalreporter, collector.groups(mismatches=False))
    # Said on stderr when it happened, but pytest captured that and drops it for a test
    # that passes: a full disk must not leave an empty log file unexplained.
    for line in failures:
        terminalreporter.line(line, yellow=True)


def _summarise_mismatches(
    terminalreporter: Any, groups: dict[tuple[Any, ...], list[dict[str, Any]]]
) -> None:
    if not groups:
        return
    total = sum(len(records) for records in groups.values())
    nouns = Counter(_noun(records[0].get("resource")) for records in groups.values())
    sources = " and ".join(f"{n} {noun}{'s' * (n != 1)}" for noun, n in nouns.items())
    terminalreporter.line(
        f"{total} event-loop mismatch{'es' if total != 1 else ''} from {sources}:"
    )
    for (code, created_at, created_in, url), records in groups.items():
        where = f"{created_at} in {created_in}" if created_at else "creation site unknown"
        actions = sorted({r["action"] for r in records})
        tests = list(dict.fromkeys(_test_name(r.get("used_during")) for r in records))
        # The phase stays here: "(setup)" shows a fixture bound the engine.
        bound = list(dict.fromkeys(r.get("bound_during") or "outside any test" for r in records))
        terminalreporter.line(f"  {code} {where}" + (f"  [{url}]" if url else ""))
        terminalreporter.line(
            f"    {len(records)} × {'/'.join(actions)}; first bound during {bound[0]}"
        )
        terminalreporter.line(f"    used on another loop by {len(tests)} test(s):")
        for test in tests:
            terminalreporter.line(f"      {test}")


def _summarise_other_records(
    terminalreporter: Any, groups: dict[tuple[Any, ...], list[dict[str, Any]]]
) -> None:
    """Leaks and misplaced disposes: one line per engine and kind, with the tests involved."""
    for (code, created_at, created_in, url), records in groups.items():
        where = f"{created_at} in {created_in}" if created_at else "creation site unknown"
        events = sorted({r["event"] for r in records})
        tests = list(dict.fromkeys(_test_name(r.get("used_during")) for r in records))
        terminalreporter.line(
            f"  {code} {where}  [{url}]: {len(records)} × {'/'.join(events)} "
            f"during {', '.join(tests)}"
        )
