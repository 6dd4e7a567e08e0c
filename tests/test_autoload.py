"""Programs outside pytest: LOOPGUARD=1 via the start-up hook, and `loopguard run`."""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pgserver import sqlalchemy_url

REPO = Path(__file__).resolve().parent.parent

# A task runner in miniature: a module-level engine, one asyncio.run() per job.
APP = textwrap.dedent(
    """\
    import asyncio
    import os

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(os.environ["DATABASE_URL"])


    async def job():
        async with engine.connect() as conn:
            return (await conn.execute(text("select pg_backend_pid()"))).scalar()


    for number in (1, 2):
        try:
            asyncio.run(job())
        except Exception as exc:
            print(f"job {number}: {type(exc).__module__}.{type(exc).__name__}")
        else:
            print(f"job {number}: ok")
    """
)


@pytest.fixture
def app(tmp_path: Path, pg_dsn: str) -> Path:
    script = tmp_path / "app.py"
    script.write_text(APP)
    return script


def _run(args: list[str], cwd: Path, pg_dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTEST_"))}
    clean.update(DATABASE_URL=sqlalchemy_url(pg_dsn), **env)
    return subprocess.run(args, cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)


def _jobs(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("job ")]


def test_the_start_up_hook_is_installed_next_to_the_package() -> None:
    """The .pth file that makes LOOPGUARD=1 work without code changes is in site-packages."""
    found = [Path(d) / "asyncio_loopguard.pth" for d in site.getsitepackages()]
    assert any(path.is_file() for path in found), found


def test_without_loopguard_the_second_job_fails_inside_asyncpg(app: Path, pg_dsn: str) -> None:
    """The baseline: job 2 dies with asyncio's own RuntimeError from deep inside asyncpg."""
    result = _run([sys.executable, str(app)], app.parent, pg_dsn)
    assert _jobs(result) == ["job 1: ok", "job 2: builtins.RuntimeError"], result.stderr


def test_loopguard_env_var_guards_a_plain_python_program(app: Path, pg_dsn: str) -> None:
    """LOOPGUARD=1 python app.py: job 2 fails with LoopMismatchError naming app.py's engine.
    With structlog unconfigured the records go to stderr, rendered as structlog's default
    would: stdout holds the program's own output and nothing else (it may be data)."""
    result = _run([sys.executable, str(app)], app.parent, pg_dsn, LOOPGUARD="1")
    assert result.stdout.splitlines() == ["job 1: ok", "job 2: loopguard.LoopMismatchError"]
    [record] = [line for line in result.stderr.splitlines() if "loopguard.loop_mismatch" in line]
    assert "[error    ] loopguard.loop_mismatch" in record  # structlog's default renderer
    assert "created_at=app.py:7" in record
    assert "cause=closed-loop-run" in record


# The application configures structlog after loopguard was installed (at the import of
# SQLAlchemy), then runs the app above as a module: its configuration decides.
APP_WITH_JSON_LOGS = textwrap.dedent(
    """\
    import sys

    import sqlalchemy.ext.asyncio  # LOOPGUARD=1 installs loopguard here
    import structlog

    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    import app
    """
)


def test_an_application_structlog_configuration_still_wins(app: Path, pg_dsn: str) -> None:
    """structlog configured by the application, even after loopguard installed: the records
    go where that configuration sends them (here: JSON on stdout), not to stderr."""
    main = app.parent / "main.py"
    main.write_text(APP_WITH_JSON_LOGS)
    result = _run([sys.executable, str(main)], app.parent, pg_dsn, LOOPGUARD="1")
    assert _jobs(result) == ["job 1: ok", "job 2: loopguard.LoopMismatchError"], result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(r["event"], r["level"], r["code"]) for r in records] == [
        ("loopguard.loop_closed_with_connections", "warning", "LG106"),
        ("loopguard.loop_mismatch", "error", "LG101"),
    ]
    assert records[1]["created_at"] == "app.py:7"
    assert "loopguard." not in result.stderr


def test_loopguard_env_var_warn_mode_heals(app: Path, pg_dsn: str) -> None:
    """LOOPGUARD=warn: both jobs run; the warning points at the job's line in app.py."""
    result = _run([sys.executable, str(app)], app.parent, pg_dsn, LOOPGUARD="warn")
    assert _jobs(result) == ["job 1: ok", "job 2: ok"], result.stderr
    assert "app.py:11: LoopMismatchWarning: SQLAlchemy AsyncEngine used on event loop" in (
        result.stderr
    )


def test_run_command_with_a_script(app: Path, pg_dsn: str) -> None:
    """python -m loopguard run -- app.py runs the script in-process with loopguard installed."""
    result = _run([sys.executable, "-m", "loopguard", "run", "--", str(app)], app.parent, pg_dsn)
    assert result.returncode == 0, result.stderr
    assert _jobs(result) == ["job 1: ok", "job 2: loopguard.LoopMismatchError"], result.stderr


def test_run_command_warn_mode_with_a_command(app: Path, pg_dsn: str) -> None:
    """loopguard run --mode warn -- python app.py: a command is guarded through LOOPGUARD."""
    args = [sys.executable, "-m", "loopguard", "run", "--mode", "warn", "--"]
    result = _run([*args, sys.executable, str(app)], app.parent, pg_dsn)
    assert _jobs(result) == ["job 1: ok", "job 2: ok"], result.stderr
    assert "LoopMismatchWarning" in result.stderr


def test_run_command_with_a_module(app: Path, pg_dsn: str) -> None:
    """loopguard run -- -m app: modules run in-process too."""
    result = _run([sys.executable, "-m", "loopguard", "run", "--", "-m", "app"], app.parent, pg_dsn)
    assert _jobs(result) == ["job 1: ok", "job 2: loopguard.LoopMismatchError"], result.stderr


def test_run_command_bad_input(tmp_path: Path, pg_dsn: str) -> None:
    """Nothing to run, or a command that does not exist: a clear message and an exit status."""
    empty = _run([sys.executable, "-m", "loopguard", "run"], tmp_path, pg_dsn)
    assert empty.returncode == 2
    assert "loopguard run: nothing to run" in empty.stderr
    missing = _run(
        [sys.executable, "-m", "loopguard", "run", "--", "no-such-cmd"], tmp_path, pg_dsn
    )
    assert missing.returncode == 127
    assert "loopguard run: cannot run 'no-such-cmd': No such file or directory" in missing.stderr


PROBE = (
    "import sys; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('loopguard', 'sqlalchemy')))"
)


@pytest.mark.parametrize("value", [None, "0", "off", "false"])
def test_hook_imports_nothing_when_off(tmp_path: Path, pg_dsn: str, value: str) -> None:
    """LOOPGUARD unset or off: the start-up hook imports nothing at all."""
    env = {} if value is None else {"LOOPGUARD": value}
    result = _run([sys.executable, "-c", PROBE], tmp_path, pg_dsn, **env)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_start_up_line_knows_every_off_spelling() -> None:
    """The .pth line decides "off" itself so that it imports nothing then; the resolver has
    the final word on every other value, so the two lists of off spellings must agree."""
    from loopguard import _config

    line = (REPO / "asyncio_loopguard.pth").read_text()
    quoted = re.search(r"not in \(([^)]*)\)", line)
    assert quoted is not None, line
    spellings = {text.strip().strip('"') for text in quoted.group(1).split(",")}
    assert spellings == {"", *_config.OFF_TEXT}


def test_hook_waits_for_a_guarded_library(tmp_path: Path, pg_dsn: str) -> None:
    """LOOPGUARD=1 in a process that never imports SQLAlchemy: nothing is installed or imported
    beyond loopguard itself (pip, linters and other tools pay almost nothing)."""
    code = PROBE + "; import loopguard; print(loopguard.is_installed())"
    result = _run([sys.executable, "-c", code], tmp_path, pg_dsn, LOOPGUARD="1")
    modules, installed = result.stdout.splitlines()
    assert "sqlalchemy" not in modules
    assert installed == "False"


BAD_SETTINGS = [
    # id, environment, the one line on stderr (the log file's path is the app's directory)
    (
        "bad-mode",
        {"LOOPGUARD": "yes"},
        "loopguard: Invalid loopguard mode 'yes' from the LOOPGUARD environment variable. "
        "Valid values: 1, true, on, raise, warn, 0, false, off.",
    ),
    (
        "log-file-is-a-directory",
        {"LOOPGUARD": "1", "LOOPGUARD_LOG_FILE": "{dir}"},
        "loopguard: Cannot open the loopguard log file '{dir}' from the LOOPGUARD_LOG_FILE "
        "environment variable: Is a directory.",
    ),
    (
        "log-file-in-a-missing-directory",
        {"LOOPGUARD": "warn", "LOOPGUARD_LOG_FILE": "{dir}/missing/lg.jsonl"},
        "loopguard: Cannot open the loopguard log file '{dir}/missing/lg.jsonl' from the "
        "LOOPGUARD_LOG_FILE environment variable: No such file or directory.",
    ),
]


@pytest.mark.parametrize(
    ("env", "line"), [case[1:] for case in BAD_SETTINGS], ids=[case[0] for case in BAD_SETTINGS]
)
def test_hook_stops_the_program_on_a_bad_setting(
    app: Path, pg_dsn: str, env: dict[str, str], line: str
) -> None:
    """A bad LOOPGUARD or LOOPGUARD_LOG_FILE: one line naming the variable and its value, and
    the program stops with status 2 where loopguard would install (app.py's import of
    SQLAlchemy), before any job runs; never a traceback, never silently unguarded."""
    env = {name: value.format(dir=app.parent) for name, value in env.items()}
    result = _run([sys.executable, str(app)], app.parent, pg_dsn, **env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line.format(dir=app.parent)]
    assert _jobs(result) == []


def test_hook_says_nothing_when_nothing_is_guarded(tmp_path: Path, pg_dsn: str) -> None:
    """A program that never imports SQLAlchemy or asyncpg: loopguard never installs, so a bad
    setting does not stop it (pip or a linter inheriting the variable)."""
    result = _run([sys.executable, "-c", "print('done')"], tmp_path, pg_dsn, LOOPGUARD="yes")
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_hook_stops_pytest_when_a_plugin_imports_sqlalchemy_first(
    pytester: pytest.Pytester, pg_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under pytest the hook can fire before loopguard's plugin decides: a plugin given with
    -p that imports SQLAlchemy.  Same rule: one line, status 2, no traceback."""
    pytester.makepyfile(early_plugin="import sqlalchemy.ext.asyncio\n")
    pytester.makepyfile("def test_never_runs():\n    pass\n")
    monkeypatch.setenv("LOOPGUARD", "yes")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    result = pytester.runpytest_subprocess("-p", "early_plugin", "-p", "no:cacheprovider")
    assert result.ret == 2
    assert result.stderr.lines == [BAD_SETTINGS[0][2]]
    assert "Traceback" not in result.stdout.str()


def test_pytest_with_a_bad_log_file_is_a_usage_error(
    pytester: pytest.Pytester, pg_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOOPGUARD=1 pytest with a log file that cannot be opened: pytest's one-line usage error
    (the plugin decides under pytest), before any test runs."""
    pytester.makepyfile("import sqlalchemy.ext.asyncio\n\ndef test_never_runs():\n    pass\n")
    monkeypatch.setenv("LOOPGUARD", "1")
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(pytester.path))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: Cannot open the loopguard log file '{pytester.path}' from the "
            "LOOPGUARD_LOG_FILE environment variable: Is a directory."
        ]
    )
    assert "Traceback" not in result.stderr.str()
    result.stdout.no_fnmatch_line("collected*")


def test_run_command_with_a_bad_log_file(app: Path, pg_dsn: str) -> None:
    """loopguard run -- app.py with a log file that cannot be opened: one line, status 2."""
    command = [sys.executable, "-m", "loopguard", "run", "--", str(app)]
    result = _run(command, app.parent, pg_dsn, LOOPGUARD_LOG_FILE=str(app.parent))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"loopguard run: Cannot open the loopguard log file '{app.parent}' from the "
        "LOOPGUARD_LOG_FILE environment variable: Is a directory."
    ]
    assert _jobs(result) == []


def test_pytest_cli_off_beats_the_start_up_hook(pytester: pytest.Pytester, pg_env: str) -> None:
    """LOOPGUARD=1 starts the hook, but `pytest --loopguard-mode=off` wins (CLI > env)."""
    pytester.makepyfile(
        """
        import loopguard
        import sqlalchemy.ext.asyncio

        def test_off():
            assert not loopguard.is_installed()
        """
    )
    os.environ["LOOPGUARD"] = "1"
    try:
        result = pytester.runpytest_subprocess("--loopguard-mode=off", "-p", "no:cacheprovider")
    finally:
        del os.environ["LOOPGUARD"]
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["loopguard: off"])


def test_pytest_with_the_hook_active_still_summarises(
    pytester: pytest.Pytester, pg_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOOPGUARD=1: the hook and the plugin cooperate (one install, one summary section)."""
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function")
    pytester.makeconftest("import sqlalchemy.ext.asyncio  # triggers the hook before tests")
    pytester.makepyfile(
        f"""
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine({sqlalchemy_url(pg_env)!r})

        async def test_one():
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))

        async def test_two():
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
        """
    )
    monkeypatch.setenv("LOOPGUARD", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "loopguard: mode=raise (from the LOOPGUARD environment variable), guarding *",
            "*= loopguard =*",
            "1 event-loop mismatch from 1 engine:",
        ]
    )
