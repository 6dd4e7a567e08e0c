"""install() / uninstall(): exact restore, idempotence, configuration errors, missing libraries."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import structlog
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool
from teststack import metadata_closure, requirements_closure

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
        "QueuePool._close_connection": QueuePool.__dict__.get("_close_connection"),
        "QueuePool.recreate": QueuePool.__dict__.get("recreate"),
        "AsyncAdaptedQueuePool has own _do_get": "_do_get" in AsyncAdaptedQueuePool.__dict__,
        "AsyncEngine.__init__": AsyncEngine.__dict__.get("__init__"),
        # A listener on the Engine class would switch on event dispatch for every engine.
        "Engine._has_events": Engine.__dict__.get("_has_events"),
        "a listener of loopguard's on the Engine class": any(
            listener.__module__.startswith("loopguard")
            for name in Engine.dispatch._event_names
            for listener in getattr(Engine.dispatch, name)._clslevel.get(Engine, ())
        ),
        # raw asyncpg (loopguard/integrations/_asyncpg.py): by identity, absent as None
        **{
            f"asyncpg {owner.__name__}.{name}": owner.__dict__.get(name)
            for owner, name in _asyncpg_patched()
        },
    }


def _asyncpg_patched() -> list[tuple[Any, str]]:
    """The class attributes the asyncpg integration replaces while installed."""
    from asyncpg.connection import Connection
    from asyncpg.cursor import BaseCursor, CursorFactory
    from asyncpg.pool import Pool
    from asyncpg.prepared_stmt import PreparedStatement
    from asyncpg.transaction import Transaction

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
        *((PreparedStatement, name) for name in ("cursor", "explain", "fetch", "fetchval")),
        *((PreparedStatement, name) for name in ("fetchrow", "fetchmany", "executemany")),
        (Transaction, "_check_conn_validity"),
        (CursorFactory, "_check_conn_validity"),
        (BaseCursor, "_check_conn_validity"),
    ]


def test_uninstall_restores_every_patched_attribute_exactly() -> None:
    """After install() + uninstall() every slot holds the very object it held before."""
    before = _patched_slots()
    loopguard.install()
    during = _patched_slots()
    assert during["QueuePool._do_get"] is not before["QueuePool._do_get"]
    assert during["QueuePool.dispose"] is not before["QueuePool.dispose"]
    assert during["QueuePool._close_connection"] is not before["QueuePool._close_connection"]
    assert during["QueuePool.recreate"] is not before["QueuePool.recreate"]
    assert during["AsyncEngine.__init__"] is not before["AsyncEngine.__init__"]
    assert during["a listener of loopguard's on the Engine class"] is False
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


def _next_line() -> str:
    """``tests/test_install.py:N`` of the caller's next line (where install() is called)."""
    return f"tests/test_install.py:{sys._getframe(1).f_lineno + 1}"


@pytest.mark.parametrize("value", ["loud", "", 1, True])
def test_unknown_mode_argument_is_a_clear_error(value: Any) -> None:
    """install('loud') names the call, the valid values, and installs nothing."""
    with pytest.raises(loopguard.ConfigError) as excinfo:
        where = _next_line()
        loopguard.install(value)
    assert excinfo.value.args == (
        f"Invalid loopguard mode {value!r} from install() at {where}. "
        "Valid values: 1, true, on, raise, warn, 0, false, off.",
    )
    assert isinstance(excinfo.value, ValueError)
    assert not loopguard.is_installed()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("RAISE", "raise"), (" Warn ", "warn"), ("1", "raise"), ("on", "raise"), ("off", None)],
)
def test_mode_argument_takes_the_spellings_of_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: Optional[str]
) -> None:
    """install("RAISE") is install("raise"); install("off") does nothing, whatever LOOPGUARD
    says (an explicit argument wins over the environment)."""
    monkeypatch.setenv("LOOPGUARD", "warn" if expected is None else "0")
    before = _patched_slots()
    loopguard.install(value)
    assert loopguard.mode() == expected
    if expected is None:
        assert _patched_slots() == before


def test_a_bare_install_keeps_the_mode_in_effect(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare install() while installed (a library's, or conftest.py's under --loopguard-mode)
    neither resets the mode to the default nor takes over who installed it."""
    loopguard.install("warn")
    installed_by = _state.STATE.activation
    monkeypatch.setenv("LOOPGUARD", "raise")
    loopguard.install()
    assert loopguard.mode() == "warn"
    assert _state.STATE.activation is installed_by


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


def _sink_path() -> Optional[str]:
    """The path of loopguard's JSON-lines sink, if one is open."""
    sink = _state.STATE.sink
    return sink.path if sink is not None else None


def test_log_file_from_environment_and_argument(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LOOPGUARD_LOG_FILE opens loopguard's own sink; log_file= wins; uninstall closes it."""
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(tmp_path / "env.jsonl"))
    loopguard.install()
    assert _sink_path() == str(tmp_path / "env.jsonl")
    loopguard.uninstall()
    assert _sink_path() is None
    loopguard.install(log_file=str(tmp_path / "arg.jsonl"))
    assert _sink_path() == str(tmp_path / "arg.jsonl")


BAD_LOG_FILES = [
    # id, path (tmp_path/... when relative), the OS's reason
    ("directory", ".", errno.EISDIR),
    ("missing-directory", "missing/lg.jsonl", errno.ENOENT),
    ("proc", "/proc/x", errno.ENOENT),
]


@pytest.mark.parametrize("given_as", ["argument", "environment"])
@pytest.mark.parametrize(
    ("path", "reason"),
    [case[1:] for case in BAD_LOG_FILES],
    ids=[case[0] for case in BAD_LOG_FILES],
)
def test_a_log_file_that_cannot_be_opened_is_a_config_error_before_anything_is_patched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, given_as: str, path: str, reason: int
) -> None:
    """install(log_file=<a directory>): ConfigError naming the path, where it came from and
    the OS's reason; nothing patched, so a second install() works and nobody gets warn mode's
    healing after asking for raise."""
    bad = str(tmp_path / path) if not path.startswith("/") else path
    before = _patched_slots()
    if given_as == "environment":
        monkeypatch.setenv("LOOPGUARD_LOG_FILE", bad)
        source = "the LOOPGUARD_LOG_FILE environment variable"
        kwargs = {}
    else:
        source = "install(log_file=...)"
        kwargs = {"log_file": bad}
    with pytest.raises(loopguard.ConfigError) as excinfo:
        loopguard.install("raise", **kwargs)
    assert excinfo.value.args == (
        f"Cannot open the loopguard log file {bad!r} from {source}: {os.strerror(reason)}.",
    )
    assert not loopguard.is_installed()
    assert _patched_slots() == before
    monkeypatch.delenv("LOOPGUARD_LOG_FILE", raising=False)
    loopguard.install("raise")
    assert loopguard.mode() == "raise"


def test_a_bad_log_file_changes_nothing_of_an_installation(tmp_path: Path) -> None:
    """Installed with a good log file: a second install() with a bad one raises and keeps the
    mode, the patches and the open log file."""
    good = str(tmp_path / "good.jsonl")
    loopguard.install("raise", log_file=good)
    patched = _patched_slots()
    sink = _state.STATE.sink
    with pytest.raises(loopguard.ConfigError):
        loopguard.install("warn", log_file=str(tmp_path))
    assert loopguard.mode() == "raise"
    assert _state.STATE.sink is sink
    assert _patched_slots() == patched


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


def test_repr_of_the_state_says_what_is_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state's repr is what a user sees when debugging: mode, source, integrations."""
    assert repr(_state.STATE) == "<loopguard state: not installed>"
    where = _next_line()
    loopguard.install("warn")
    assert repr(_state.STATE) == (
        f"<loopguard state: mode='warn' (from install() at {where}), "
        "guarding=['sqlalchemy', 'asyncpg', 'httpx', 'aiohttp', 'redis', 'psycopg_pool', "
        "'asyncio'], skipped={}, log_file=None>"
    )
    loopguard.uninstall()
    monkeypatch.setenv("LOOPGUARD", "warn")
    where = _next_line()
    loopguard.install()
    assert repr(_state.STATE).startswith(
        f"<loopguard state: mode='warn' (from install() at {where}, "
        "mode from the LOOPGUARD environment variable), "
    )


def _sanitized_python(
    tmp_path: Path,
    packages: list[str],
    code: Optional[str] = None,
    *,
    args: tuple[str, ...] = (),
    cwd: Optional[Path] = None,
    with_metadata: bool = False,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run code (or ``python ARGS``) in a Python that sees only loopguard and the listed
    installed packages.

    ``-S`` drops site-packages; a directory of symlinks puts back exactly what is named, with
    what those distributions require on this Python and stack (structlog needs
    typing_extensions before 3.11, SQLAlchemy 2 needs it everywhere, 1.4 does not);
    ``with_metadata``: their ``.dist-info`` directories too (pytest needs them).
    """
    visible = tmp_path / "visible"
    visible.mkdir()
    (visible / "loopguard").symlink_to(REPO / "loopguard")
    for name in requirements_closure(packages):
        file = __import__(name).__file__
        assert file is not None, name
        origin = Path(file).parent if file.endswith("__init__.py") else Path(file)
        (visible / origin.name).symlink_to(origin)
    if with_metadata:
        for dist_info in metadata_closure(packages):
            (visible / dist_info.name).symlink_to(dist_info)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LOOPGUARD"))}
    clean = {k: v for k, v in clean.items() if not k.startswith("PYTEST_")}
    clean.update(PYTHONPATH=str(visible), **env)
    argv = ["-c", textwrap.dedent(code)] if code is not None else list(args)
    return subprocess.run(
        [sys.executable, "-S", "-W", "error", *argv],
        capture_output=True,
        text=True,
        env=clean,
        cwd=cwd,
        timeout=60,
    )


def test_without_sqlalchemy_or_asyncpg_install_guards_asyncio_primitives(tmp_path: Path) -> None:
    """No SQLAlchemy, no asyncpg: `import loopguard` works; install() guards asyncio's own
    primitives (LG111) and says why the database integrations are skipped."""
    result = _sanitized_python(
        tmp_path,
        ["structlog"],
        """
        import asyncio
        import loopguard
        from loopguard._state import STATE
        try:
            import sqlalchemy
        except ImportError:
            pass
        else:
            raise SystemExit("sqlalchemy should not be importable here")
        loopguard.install()
        print("GUARDING:", STATE.enabled)
        for name, why in STATE.skipped.items():
            print("SKIPPED:", name, why)
        lock = None

        async def contend():
            global lock
            if lock is None:
                lock = asyncio.Lock()  # made in the first loop: bound to it on every Python
            async def hold():
                async with lock:
                    await asyncio.sleep(0.01)
            await asyncio.gather(hold(), hold())

        asyncio.run(contend())
        try:
            asyncio.run(contend())
        except loopguard.LoopMismatchError as exc:
            print("RAISED:", exc.code, exc.resource)
        loopguard.uninstall()
        print("INSTALLED:", loopguard.is_installed())
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "GUARDING: ['asyncio']",
        "SKIPPED: sqlalchemy SQLAlchemy is not installed (No module named 'sqlalchemy'); "
        "pip install 'sqlalchemy[asyncio]'",
        "SKIPPED: asyncpg asyncpg is not installed (No module named 'asyncpg'); "
        "pip install asyncpg",
        "SKIPPED: httpx httpx is not installed (No module named 'httpx'); pip install httpx",
        "SKIPPED: aiohttp aiohttp is not installed (No module named 'aiohttp'); "
        "pip install aiohttp",
        "SKIPPED: redis redis-py is not installed (No module named 'redis'); pip install redis",
        "SKIPPED: psycopg_pool psycopg_pool is not installed (No module named 'psycopg_pool'); "
        "pip install psycopg-pool",
        "RAISED: LG111 asyncio.Lock",
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


@pytest.mark.parametrize(
    ("args", "env", "ini_line", "source"),
    [
        ([], {"LOOPGUARD": "1"}, "", "the LOOPGUARD environment variable"),
        ([], {}, "asyncio_loopguard = warn", "the asyncio_loopguard ini option"),
        (["--loopguard"], {}, "", "the --loopguard option"),
    ],
    ids=["env", "ini", "cli"],
)
def test_without_any_guarded_library_the_suite_runs_guarding_asyncio_primitives(
    tmp_path: Path, args: list[str], env: dict[str, str], ini_line: str, source: str
) -> None:
    """LOOPGUARD=1 exported for a whole CI reaches suites that use neither SQLAlchemy nor
    asyncpg nor an HTTP client: pytest runs them as usual, and loopguard guards asyncio's own
    primitives there (always importable, so there is always something to guard)."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "pytest.ini").write_text(f"[pytest]\nfilterwarnings = error\n{ini_line}\n")
    (suite / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    result = _sanitized_python(
        tmp_path,
        ["structlog", "pytest"],
        args=("-m", "pytest", "-p", "loopguard.pytest_plugin", "-p", "no:cacheprovider", *args),
        cwd=suite,
        with_metadata=True,
        **env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    mode = "warn" if "warn" in ini_line else "raise"
    assert f"loopguard: mode={mode} (from {source}), guarding asyncio" in (
        result.stdout.splitlines()
    )
    assert "1 passed" in result.stdout
    assert result.stderr == ""
