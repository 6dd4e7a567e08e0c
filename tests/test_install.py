"""install() / uninstall(): exact restore, idempotence, configuration errors, missing libraries."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool
from teststack import requirements_closure

import loopguard
from loopguard import _state
from loopguard.integrations import _sqlalchemy

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("LOOPGUARD", raising=False)
    monkeypatch.delenv("LOOPGUARD_LOG_FILE", raising=False)
    yield
    if loopguard.is_installed():
        loopguard.uninstall()


def _patched_slots() -> dict[str, Any]:
    """Everything install() may change, by identity."""
    return {
        "QueuePool._do_get": QueuePool.__dict__.get("_do_get"),
        "QueuePool.dispose": QueuePool.__dict__.get("dispose"),
        "AsyncAdaptedQueuePool has own _do_get": "_do_get" in AsyncAdaptedQueuePool.__dict__,
        "AsyncEngine.__init__": AsyncEngine.__dict__.get("__init__"),
        # Listening on the Engine class would switch on event dispatch for every engine.
        "Engine._has_events": Engine.__dict__.get("_has_events"),
        "engine_disposed listener": event.contains(
            Engine, "engine_disposed", _sqlalchemy._on_engine_disposed
        ),
        # raw asyncpg (loopguard/integrations/_asyncpg.py): by identity, absent as None
        **{
            f"asyncpg {owner.__name__}.{name}": owner.__dict__.get(name)
            for owner, name in _asyncpg_patched()
        },
    }


def _asyncpg_patched() -> list[tuple[Any, str]]:
    """The class attributes the asyncpg integration replaces while installed."""
    from asyncpg import connresource
    from asyncpg.connection import Connection
    from asyncpg.pool import Pool

    return [
        (Pool, "__init__"),
        (Pool, "_async__init__"),
        (Pool, "_check_init"),
        (Pool, "close"),
        (Pool, "terminate"),
        (Connection, "__init__"),
        (Connection, "_check_open"),
        (Connection, "close"),
        (Connection, "_copy_out"),
        (Connection, "_copy_in"),
        (connresource.ConnectionResource, "_check_conn_validity"),
    ]


def test_uninstall_restores_every_patched_attribute_exactly() -> None:
    """After install() + uninstall() every slot holds the very object it held before."""
    before = _patched_slots()
    loopguard.install()
    during = _patched_slots()
    assert during["QueuePool._do_get"] is not before["QueuePool._do_get"]
    assert during["QueuePool.dispose"] is not before["QueuePool.dispose"]
    assert during["AsyncEngine.__init__"] is not before["AsyncEngine.__init__"]
    assert during["engine_disposed listener"] is True
    loopguard.uninstall()
    after = _patched_slots()
    assert after == before
    for key, value in before.items():
        assert after[key] is value, key


def test_install_is_idempotent_and_a_second_call_updates_the_mode() -> None:
    """A second install() patches nothing twice; it only changes the mode."""
    loopguard.install()
    wrapped = QueuePool.__dict__["_do_get"]
    loopguard.install("warn")
    assert QueuePool.__dict__["_do_get"] is wrapped
    assert loopguard.mode() == "warn"
    loopguard.uninstall()
    assert not loopguard.is_installed()
    assert not getattr(QueuePool._do_get, "__loopguard_wrapped__", False)


def test_uninstall_when_not_installed_warns_and_changes_nothing() -> None:
    """uninstall() without install() (or twice) is safe and says so."""
    before = _patched_slots()
    with pytest.warns(loopguard.LoopguardWarning) as record:
        loopguard.uninstall()
    assert str(record[0].message) == (
        "loopguard.uninstall() was called but loopguard is not installed; nothing to undo."
    )
    assert record[0].filename == __file__
    loopguard.install()
    loopguard.uninstall()
    with pytest.warns(loopguard.LoopguardWarning):
        loopguard.uninstall()
    assert _patched_slots() == before


def test_unknown_mode_argument_is_a_clear_error() -> None:
    """install('loud') names the valid modes and installs nothing."""
    with pytest.raises(loopguard.ConfigError) as excinfo:
        loopguard.install("loud")
    assert excinfo.value.args == ("Unknown loopguard mode 'loud'. Valid modes: raise, warn.",)
    assert isinstance(excinfo.value, ValueError)
    assert not loopguard.is_installed()


@pytest.mark.parametrize("value", ["maybe", "yes", "2", "raise!"])
def test_unknown_environment_value_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """LOOPGUARD=<anything else> names the variable and the accepted values."""
    monkeypatch.setenv("LOOPGUARD", value)
    with pytest.raises(loopguard.ConfigError) as excinfo:
        loopguard.install()
    assert excinfo.value.args == (
        f"Invalid loopguard mode {value!r} from the LOOPGUARD environment variable. "
        "Valid values: 1, true, on, raise, warn, 0, false, off.",
    )
    assert not loopguard.is_installed()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", "raise"),
        ("true", "raise"),
        ("ON", "raise"),
        ("raise", "raise"),
        ("warn", "warn"),
        (" Warn ", "warn"),
        ("0", None),
        ("false", None),
        ("off", None),
    ],
)
def test_environment_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    """Every documented spelling of LOOPGUARD; the off values make install() a no-op."""
    monkeypatch.setenv("LOOPGUARD", value)
    loopguard.install()
    assert loopguard.mode() == expected
    assert loopguard.is_installed() is (expected is not None)


def test_kill_switch_leaves_everything_unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """LOOPGUARD=0: a bare install() in conftest.py patches nothing at all."""
    before = _patched_slots()
    monkeypatch.setenv("LOOPGUARD", "0")
    loopguard.install()
    assert _patched_slots() == before


def test_explicit_mode_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """install('raise') with LOOPGUARD=warn, and install('warn') with LOOPGUARD=0."""
    monkeypatch.setenv("LOOPGUARD", "warn")
    loopguard.install("raise")
    assert loopguard.mode() == "raise"
    loopguard.uninstall()
    monkeypatch.setenv("LOOPGUARD", "0")
    loopguard.install("warn")
    assert loopguard.mode() == "warn"


def test_log_file_from_environment_and_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LOOPGUARD_LOG_FILE opens loopguard's own sink; log_file= wins; uninstall closes it."""
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(tmp_path / "env.jsonl"))
    loopguard.install()
    assert _state.STATE.sink is not None
    assert _state.STATE.sink.path == str(tmp_path / "env.jsonl")
    loopguard.uninstall()
    assert _state.STATE.sink is None
    loopguard.install(log_file=str(tmp_path / "arg.jsonl"))
    assert _state.STATE.sink is not None
    assert _state.STATE.sink.path == str(tmp_path / "arg.jsonl")


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_a_log_file_that_cannot_be_opened_is_a_clear_error_and_patches_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    """A log file in a directory that does not exist: ConfigError naming the path and where
    it came from, and nothing patched (it used to raise FileNotFoundError after patching,
    with is_installed() False)."""
    before = _patched_slots()
    path = str(tmp_path / "no-such-dir" / "lg.jsonl")
    if source == "argument":
        where = "install(log_file=...)"
        call = lambda: loopguard.install(log_file=path)  # noqa: E731
    else:
        where = "the LOOPGUARD_LOG_FILE environment variable"
        monkeypatch.setenv("LOOPGUARD_LOG_FILE", path)
        call = loopguard.install
    with pytest.raises(loopguard.ConfigError) as excinfo:
        call()
    assert excinfo.value.args == (
        f"Cannot open the loopguard log file {path!r} from {where}: No such file or directory.",
    )
    assert not loopguard.is_installed()
    assert _patched_slots() == before


def test_a_bad_log_file_on_a_second_install_keeps_the_first(tmp_path: Path) -> None:
    """Installed with a good file, install() with a bad one raises and changes nothing."""
    loopguard.install("warn", log_file=str(tmp_path / "good.jsonl"))
    with pytest.raises(loopguard.ConfigError):
        loopguard.install("raise", log_file=str(tmp_path / "no-such-dir" / "lg.jsonl"))
    assert loopguard.mode() == "warn"
    assert _state.STATE.sink is not None
    assert _state.STATE.sink.path == str(tmp_path / "good.jsonl")


def test_install_never_configures_logging_or_structlog() -> None:
    """A library must not touch the application's logging setup."""
    structlog_config = structlog.get_config()
    root_handlers = list(logging.getLogger().handlers)
    loopguard.install()
    loopguard.uninstall()
    assert structlog.get_config() == structlog_config
    assert logging.getLogger().handlers == root_handlers


def test_failure_during_install_leaves_nothing_half_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If an integration fails after patching, every patch and listener is rolled back."""
    before = _patched_slots()

    def explode() -> None:
        raise RuntimeError("boom while adopting engines")

    monkeypatch.setattr(_sqlalchemy, "_adopt_existing_engines", explode)
    with pytest.raises(RuntimeError, match="boom while adopting engines"):
        loopguard.install()
    assert not loopguard.is_installed()
    assert _patched_slots() == before


def test_repr_of_the_state_says_what_is_guarded() -> None:
    """The state's repr is what a user sees when debugging: mode, source, integrations."""
    assert repr(_state.STATE) == "<loopguard state: not installed>"
    loopguard.install("warn")
    assert repr(_state.STATE) == (
        "<loopguard state: mode='warn' (from install() argument), "
        "guarding=['sqlalchemy', 'asyncpg', 'redis'], skipped={}, log_file=None>"
    )


def _sanitized_python(
    tmp_path: Path, packages: list[str], code: str
) -> subprocess.CompletedProcess[str]:
    """Run code in a Python that sees only loopguard and the listed installed packages.

    ``-S`` drops site-packages; a directory of symlinks puts back exactly what is named, with
    what those distributions require on this Python and stack (structlog needs
    typing_extensions before 3.11, SQLAlchemy 2 needs it everywhere, 1.4 does not).
    """
    visible = tmp_path / "visible"
    visible.mkdir()
    (visible / "loopguard").symlink_to(REPO / "loopguard")
    for name in requirements_closure(packages):
        module = __import__(name)
        origin = (
            Path(module.__file__).parent
            if module.__file__.endswith("__init__.py")
            else Path(module.__file__)
        )
        (visible / origin.name).symlink_to(origin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOOPGUARD"))}
    env["PYTHONPATH"] = str(visible)
    return subprocess.run(
        [sys.executable, "-S", "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_without_sqlalchemy_import_works_and_install_refuses_clearly(tmp_path: Path) -> None:
    """No SQLAlchemy: `import loopguard` works; install() says what is missing, installs nothing."""
    result = _sanitized_python(
        tmp_path,
        ["structlog"],
        """
        import loopguard
        try:
            import sqlalchemy
        except ImportError:
            pass
        else:
            raise SystemExit("sqlalchemy should not be importable here")
        try:
            loopguard.install()
        except loopguard.MissingDependencyError as exc:
            print("ERROR:", exc)
            print("IMPORTERROR:", isinstance(exc, ImportError))
        print("INSTALLED:", loopguard.is_installed())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ERROR: loopguard has nothing to guard: sqlalchemy: SQLAlchemy is not installed "
        "(No module named 'sqlalchemy'); pip install 'sqlalchemy[asyncio]'; "
        "asyncpg: asyncpg is not installed (No module named 'asyncpg'); pip install asyncpg; "
        "redis: redis-py is not installed (No module named 'redis'); pip install redis.",
        "IMPORTERROR: True",
        "INSTALLED: False",
    ]


def test_without_asyncpg_the_sqlalchemy_guard_still_installs(tmp_path: Path) -> None:
    """No asyncpg: the pool-level guard does not need it; install and uninstall work."""
    result = _sanitized_python(
        tmp_path,
        ["structlog", "sqlalchemy", "greenlet"],
        """
        import loopguard
        try:
            import asyncpg
        except ImportError:
            pass
        else:
            raise SystemExit("asyncpg should not be importable here")
        loopguard.install()
        print("INSTALLED:", loopguard.is_installed())
        loopguard.uninstall()
        print("INSTALLED:", loopguard.is_installed())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["INSTALLED: True", "INSTALLED: False"]
