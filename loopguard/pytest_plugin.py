"""pytest plugin (entry point ``asyncio_loopguard``).

Mode precedence: ``--loopguard[=MODE]`` > ``LOOPGUARD`` environment variable > ini option
``asyncio_loopguard``.  Installs before conftest files are imported, so module-level engines
created by them get a creation site; uninstalls at the end of the session.  Off: every hook
returns at once and nothing is patched.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Any, NamedTuple, Optional

import pytest

from . import _autoload, _config, _context, _install, _log
from ._errors import ConfigError
from ._log import EVENT_LOOP_MISMATCH
from ._state import STATE

MODE_HELP = (
    "guard SQLAlchemy async engines against use on a foreign event loop: "
    "raise (default when the option is given bare), warn or off"
)
INI_NAME = "asyncio_loopguard"


class Resolved(NamedTuple):
    mode: Optional[str]
    source: str


_resolved_key = pytest.StashKey[Resolved]()
_collector_key = pytest.StashKey["_Collector"]()
_owns_install_key = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("loopguard")
    group.addoption(
        "--loopguard",
        action="store",
        nargs="?",
        const="raise",
        default=None,
        dest="loopguard",
        metavar="MODE",
        help=MODE_HELP + " (write --loopguard=MODE).",
    )
    parser.addini(INI_NAME, MODE_HELP, default=None)


def _resolve(cli_value: Optional[str], ini_value: Optional[str]) -> Resolved:
    try:
        _config.env_mode()  # a bad LOOPGUARD is an error even when the CLI wins
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    candidates = (
        (cli_value, "the --loopguard option"),
        (os.environ.get(_config.MODE_ENV) or None, f"the {_config.MODE_ENV} environment variable"),
        (ini_value or None, f"the {INI_NAME} ini option"),
    )
    for value, where in candidates:
        if value is not None and value.strip():
            try:
                return Resolved(_config.parse_mode_text(value, where), where)
            except ConfigError as exc:
                hint = ""
                if where == candidates[0][1] and os.path.exists(value):
                    # `pytest --loopguard tests/`: the bare option took the path as its value.
                    hint = (
                        f" {value!r} is a path: write --loopguard=MODE, or put --loopguard "
                        "after the paths."
                    )
                raise pytest.UsageError(f"{exc}{hint}") from None
    return Resolved(None, "default")


def _activate(config: pytest.Config, resolved: Resolved) -> None:
    config.stash[_resolved_key] = resolved
    # Lets a loopguard.install() from conftest.py attribute records to tests, too.
    _context.in_pytest = True
    if resolved.mode is None:
        _autoload.stand_down()  # e.g. --loopguard=off beats LOOPGUARD=1's start-up hook
        return
    # A pytest started by another pytest's test inherits that test's PYTEST_CURRENT_TEST
    # until its own first test starts: it would be blamed for engines created at import.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    _context.rootdir = str(config.rootpath)
    # Installed already when LOOPGUARD's start-up hook ran first: then only the mode is set,
    # and the session leaves it installed at the end as it found it.
    config.stash[_owns_install_key] = not STATE.installed
    try:
        _install.install(resolved.mode)
    except ConfigError as exc:  # LOOPGUARD_LOG_FILE names a file that cannot be opened
        raise pytest.UsageError(str(exc)) from None
    STATE.mode_source = resolved.source
    collector = _Collector()
    STATE.listeners.append(collector)
    config.stash[_collector_key] = collector
    from . import _pytest_scopes  # pytest-asyncio's loops named; LG105 before tests run

    _pytest_scopes.register(config)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # Before conftest.py files are imported: engines they create get their creation site.
    namespace = early_config.known_args_namespace
    _activate(early_config, _resolve(namespace.loopguard, early_config.getini(INI_NAME)))


def pytest_configure(config: pytest.Config) -> None:
    # An xdist worker: its records say which one it is.  Taken from the config, not from
    # PYTEST_XDIST_WORKER, which a pytest or a script started by a worker's test inherits.
    workerinput = getattr(config, "workerinput", None)
    _context.worker = workerinput.get("workerid") if workerinput else None
    if _resolved_key in config.stash:
        return
    # Reached when the plugin was loaded after the early hook (e.g. ``-p``).
    _activate(config, _resolve(config.getoption("loopguard"), config.getini(INI_NAME)))


def pytest_unconfigure(config: pytest.Config) -> None:
    _context.in_pytest = False
    _context.worker = None
    collector = config.stash.get(_collector_key, None)
    if collector is None:
        return
    if collector in STATE.listeners:
        STATE.listeners.remove(collector)
    if STATE.installed and config.stash.get(_owns_install_key, False):
        _install.uninstall()
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
    collector = node.config.stash.get(_collector_key, None)
    workeroutput = getattr(node, "workeroutput", {})
    records = workeroutput.get(WORKEROUTPUT_KEY)
    if collector is not None and records:
        collector.records.extend(records)
    if collector is not None:
        collector.worker_failures.extend(workeroutput.get(WORKEROUTPUT_FAILURES_KEY, ()))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    collector = session.config.stash.get(_collector_key, None)
    if workeroutput is None or collector is None:
        return  # not an xdist worker, or loopguard is off
    # execnet carries plain values only; the records are plain already (log_fields), the
    # JSON round trip makes sure of it whatever a future field holds.
    workeroutput[WORKEROUTPUT_KEY] = json.loads(json.dumps(collector.records, default=str))
    workeroutput[WORKEROUTPUT_FAILURES_KEY] = collector.failures()


def pytest_report_header(config: pytest.Config) -> str:
    resolved = config.stash.get(_resolved_key, Resolved(None, "default"))
    if resolved.mode is None:
        return "loopguard: off"
    guarding = ", ".join(STATE.enabled) or "nothing"
    return f"loopguard: mode={resolved.mode} (from {resolved.source}), guarding {guarding}"


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
            what = record.get("url") or record.get("name")  # an engine's URL, an object's name
            key = (record["code"], record.get("created_at"), record.get("created_in"), what)
            grouped[key].append(record)
        return grouped


def _noun(resource: Any) -> str:
    """What the summary counts: engines, pools, clients, connections, or other objects."""
    text = str(resource or "")
    for noun in ("engine", "pool", "client", "connection"):
        if text.lower().endswith(noun):
            return noun
    return "object"


def _test_name(during: Optional[str]) -> str:
    # PYTEST_CURRENT_TEST reads "nodeid (phase)"; the summary lists node ids.
    return during.rsplit(" (", 1)[0] if during else "outside any test"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    collector = config.stash.get(_collector_key, None)
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
        terminalreporter.line(f"  {code} {where}  [{url}]")
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
