"""Generate the parts of the docs that come from the code, the examples and real runs.

A page marks each generated part with HTML comments, invisible on GitHub and in the site::

    <!-- gen:KIND:ARG -->
    ...generated text...
    <!-- /gen -->

Kinds:
- ``ref:NAME``: a reference table rendered from loopguard itself (see ``REFERENCE``).
- ``file:NAME``: the source of ``docs_examples/NAME``, the file tests/test_docs.py runs.
- ``output:NAME``: the real output of the command ``RUNS[NAME]``, run against a real
  PostgreSQL (and a throwaway redis-server, tools/redisserver.py, for the redis examples);
  ``captured:versions``: the versions those outputs were captured with.  Only ``--capture``
  rewrites these.

Usage (from the repository root)::

    .venv/bin/python docs/_gen.py            # rewrite ref: and file: blocks from the code
    .venv/bin/python docs/_gen.py --check    # exit 1 if a page is stale (tests/test_docs.py)
    .venv/bin/python tools/pgserver.py run -- .venv/bin/python docs/_gen.py --capture
        # also rerun every command of RUNS and rewrite the output: blocks

``--capture`` runs each command with bash in a fresh copy of docs_examples/, with
DATABASE_URL pointing at the server of LOOPGUARD_TEST_DSN, HTTP_URL at a throwaway HTTP server
on 127.0.0.1 (tools/httpserver.py), REDIS_URL at a throwaway redis-server (or
LOOPGUARD_TEST_REDIS_URL), this Python's bin directory first on PATH and COLUMNS=80; stdout and
stderr are kept together, unedited.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional
from urllib.parse import parse_qs, quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "docs_examples"

BLOCK = re.compile(
    r"(?P<open><!-- gen:(?P<kind>[a-z]+):(?P<arg>[\w.-]+) -->\n)"
    r"(?P<body>.*?)(?P<close><!-- /gen -->)",
    re.S,
)


# -- the commands whose output the pages show ---------------------------------------------


class Run(NamedTuple):
    """One command shown in the docs with its real output.

    ``keep`` selects the lines that tests/test_docs.py compares between the output shown and
    a fresh run (after ``normalize``): loopguard's own words, or the errors' class names,
    not timings, paths or third-party line numbers.  ``cwd``: where the command runs, the
    copy of docs_examples/ unless it names a directory of the repository.
    """

    command: str
    keep: tuple[str, ...]
    cwd: Optional[str] = None


_PYTEST = "pytest -q -p no:cacheprovider"
_ERRORS = f"{_PYTEST} --tb=line --show-capture=no"
# loopguard's message lines, wherever they appear (pytest's "E   " lines, warnings, tracebacks).
_MESSAGE = (
    r"^(?:E\s+|\s*)(loopguard\.LoopMismatchError: .*)$",
    r"((?:LoopMismatch|PoolCreatedOutsideLoop)Warning: .*)$",
    r"^(?:E\s+|\s*)"
    r"((?:engine|pool|connection|client|session|created at|bound|checked out|used now"
    r"|likely cause|fix): .*)$",
    r"^(?:E\s+|\s*)(\(Background on this (?:error|warning): .*)$",
)
# The plugin's terminal summary.
_SUMMARY = (
    r"^(\d+ event-loop mismatch.*)$",
    r"^(  LG\d+ .*)$",
    r"^(    \d+ × .*)$",
    r"^(    used on another loop .*)$",
    r"^(      \S+::\S+)$",
)
_FAILED = (r"^(FAILED \S+ - [\w.]+)",)
# A record as structlog's default configuration prints it, and what the program printed.
_RECORD = (
    r"^(result: .*)$",
    r"(\[(?:error|warning)\s*\] loopguard\.\w+)",
    r"(code=LG\d+)",
)
_OUTCOME = (r"^(\d+ (?:passed|failed)\b.*)$",)
# An exception as Python prints it last: its class name (the rest names tasks and paths).
_EXCEPTION = (r"^([\w.]+Error): ",)
# psycopg_pool's PoolTimeout, whole: its words are the symptom.
_TIMEOUT = (r"^([\w.]+Timeout: .*)$",)

RUNS: dict[str, Run] = {
    "cached_bug_raw": Run(f"{_ERRORS} lg101_cached_bug.py", _FAILED + _OUTCOME),
    "cached_bug_guarded": Run(
        f"{_ERRORS} lg101_cached_bug.py --loopguard", _MESSAGE + _SUMMARY + _OUTCOME
    ),
    "cached_bug_warn": Run(
        f"{_PYTEST} lg101_cached_bug.py --loopguard-mode=warn", _MESSAGE + _SUMMARY + _OUTCOME
    ),
    "session_bug_raw": Run(f"{_ERRORS} lg101_session_bug.py", _FAILED + _OUTCOME),
    "session_bug_guarded": Run(
        f"{_ERRORS} lg101_session_bug.py --loopguard", _MESSAGE + _SUMMARY + _OUTCOME
    ),
    "lg105_warning": Run(
        f"{_PYTEST} --tb=no lg101_session_bug.py --loopguard",
        (
            r"(LoopScopeMismatchWarning: .*)$",
            r"^\s+((?:fixture|tests|fix): .*)$",
            r"(\(Background on this warning: .*)$",
            *_OUTCOME,
        ),
    ),
    "testclient_bug_raw": Run(f"{_ERRORS} lg101_testclient_bug.py", _FAILED + _OUTCOME),
    "testclient_bug_guarded": Run(
        f"{_ERRORS} lg101_testclient_bug.py --loopguard", _MESSAGE + _SUMMARY + _OUTCOME
    ),
    "anyio_bug_guarded": Run(f"{_ERRORS} lg101_anyio_bug.py --loopguard", _MESSAGE + _OUTCOME),
    "shared_bug_guarded": Run(f"{_ERRORS} lg101_shared_bug.py --loopguard", _MESSAGE + _OUTCOME),
    "async_to_sync_bug_raw": Run(
        "python lg101_async_to_sync_bug.py 2>&1 | tail -n 2", (r"^([\w.]+Error): ",)
    ),
    "async_to_sync_bug_guarded": Run(
        "LOOPGUARD=1 python lg101_async_to_sync_bug.py 2>&1 | tail -n 9", _MESSAGE
    ),
    "async_to_sync_fix": Run(
        "LOOPGUARD=1 python lg101_async_to_sync_fix_per_call.py", (r"^(.*)$",)
    ),
    "jobs_bug_raw": Run("python lg101_jobs_bug.py 2>&1 | tail -n 2", (r"^([\w.]+Error): ",)),
    "jobs_bug_guarded": Run("LOOPGUARD=1 python lg101_jobs_bug.py 2>&1 | tail -n 9", _MESSAGE),
    "lg106_raw": Run(
        "python -X dev lg106_leak_bug.py 2>&1 | grep -E '^result|ResourceWarning: unclosed'",
        (r"^(result: .*)$", r"(ResourceWarning: unclosed \w+)"),
    ),
    "lg106_guarded": Run("LOOPGUARD=1 python lg106_leak_bug.py", _RECORD),
    "lg102_raw": Run("python lg102_outside_loop_bug.py 2>&1 | tail -n 1", _EXCEPTION),
    # The warning's eight lines, without the log record printed to stderr before it.
    "lg102_guarded": Run(
        "LOOPGUARD=1 python lg102_outside_loop_bug.py 2>&1 | grep -A 7 PoolCreatedOutsideLoop",
        _MESSAGE,
    ),
    "lg102_first_use": Run(
        "LOOPGUARD=1 python lg102_outside_loop_bug.py 2>&1 | tail -n 8", _MESSAGE
    ),
    "lg102_fix": Run("LOOPGUARD=1 python -X dev lg102_fix_in_loop.py", (r"^(.*)$",)),
    "lg103_raw": Run(
        "python lg103_global_pool_bug.py 2>&1 | grep -E '^(job [0-9]+:|[a-zA-Z._]+Error: )'",
        (r"^(job \d+: .*)$", *_EXCEPTION),
    ),
    "lg103_guarded": Run("LOOPGUARD=1 python lg103_global_pool_bug.py 2>&1 | tail -n 8", _MESSAGE),
    "lg103_warn": Run(
        "LOOPGUARD=warn python lg103_global_pool_bug.py 2>&1 >/dev/null"
        " | grep -E 'LoopMismatchWarning: |^[a-zA-Z._]+Error: '",
        (*_MESSAGE, *_EXCEPTION),
    ),
    "lg103_fix": Run("LOOPGUARD=1 python -X dev lg103_fix_pool_per_job.py", (r"^(.*)$",)),
    "held_bug_raw": Run("python lg101_held_bug.py 2>&1 | tail -n 1", _EXCEPTION),
    "held_bug_guarded": Run("LOOPGUARD=1 python lg101_held_bug.py 2>&1 | tail -n 9", _MESSAGE),
    "held_bug_warn": Run(
        "LOOPGUARD=warn python lg101_held_bug.py 2>&1"
        " | grep -E '^job|LoopMismatchWarning: |^[a-zA-Z._]+Error: '",
        (r"^(job \d+: .*)$", *_MESSAGE, r"^([\w.]+Error): .*(connection is closed)"),
    ),
    "held_fixture_guarded": Run(
        f"{_ERRORS} lg101_held_in_tests_bug.py --loopguard",
        _MESSAGE + _SUMMARY + _OUTCOME,
    ),
    "held_fix": Run("LOOPGUARD=1 python -X dev lg101_held_fix_session_per_job.py", (r"^(.*)$",)),
    "lg112_raw": Run(
        "python lg112_global_pool_bug.py 2>&1"
        " | grep -E '^(job [0-9]+:|[a-zA-Z._]+(Error|Timeout): )'",
        (r"^(job \d+: .*)$", *_TIMEOUT),
    ),
    "lg112_guarded": Run("LOOPGUARD=1 python lg112_global_pool_bug.py 2>&1 | tail -n 8", _MESSAGE),
    "lg112_warn": Run(
        "LOOPGUARD=warn python lg112_global_pool_bug.py 2>&1 >/dev/null"
        " | grep -E 'LoopMismatchWarning: |^[a-zA-Z._]+(Error|Timeout): '",
        (*_MESSAGE, *_TIMEOUT),
    ),
    "lg112_fix": Run("LOOPGUARD=1 python -X dev lg112_fix_pool_per_job.py", (r"^(.*)$",)),
    "lg104_raw": Run(
        "python lg104_dispose_bug.py 2>&1 | grep -E '^(result|Exception|RuntimeError)'",
        (r"^(result: .*)$", r"^(Exception closing connection)", r"^(RuntimeError: Event loop .*)$"),
    ),
    "lg104_guarded": Run("LOOPGUARD=1 python lg104_dispose_bug.py", _RECORD),
    "lg104_fix": Run("LOOPGUARD=1 python -X dev lg104_fix_dispose_in_loop.py", (r"^(.*)$",)),
    "lg107_raw": Run(
        "python lg107_client_bug.py 2>&1 | grep -E '^(job [0-9]+:|[a-zA-Z._]+Error: )'",
        (r"^(job \d+: .*)$", *_EXCEPTION),
    ),
    "lg107_guarded": Run("LOOPGUARD=1 python lg107_client_bug.py 2>&1 | tail -n 8", _MESSAGE),
    "lg107_fix": Run("LOOPGUARD=1 python -X dev lg107_fix_unbind_on_close.py", (r"^(.*)$",)),
    "lg108_cached_raw": Run(f"{_ERRORS} lg108_cached_client_bug.py", _FAILED + _OUTCOME),
    "lg108_cached_guarded": Run(
        f"{_ERRORS} lg108_cached_client_bug.py --loopguard", _MESSAGE + _SUMMARY + _OUTCOME
    ),
    "lg108_jobs_raw": Run(
        "python lg108_jobs_bug.py 2>&1 | grep -E '^(job [0-9]+:|[a-zA-Z._]+Error: )'",
        (r"^(job \d+: .*)$", *_EXCEPTION),
    ),
    "lg108_jobs_guarded": Run("LOOPGUARD=1 python lg108_jobs_bug.py 2>&1 | tail -n 8", _MESSAGE),
    "lg108_warn": Run(
        "LOOPGUARD=warn python lg108_jobs_bug.py 2>&1"
        " | grep -E '^job [0-9]+:|LoopMismatchWarning: '",
        (r"^(job \d+: .*)$", *_MESSAGE),
    ),
    "lg108_fix": Run("LOOPGUARD=1 python lg108_fix_client_per_job.py", (r"^(.*)$",)),
    "lg109_raw": Run(
        "python lg109_cached_session_bug.py 2>&1 | grep -E '^(job [0-9]+:|[a-zA-Z._]+Error: )'",
        (r"^(job \d+: .*)$", *_EXCEPTION),
    ),
    "lg109_guarded": Run(
        "LOOPGUARD=1 python lg109_cached_session_bug.py 2>&1"
        " | grep -A 7 '^loopguard.LoopMismatchError'",
        _MESSAGE,
    ),
    "lg109_warn": Run(
        "LOOPGUARD=warn python lg109_cached_session_bug.py 2>&1"
        " | grep -E '^job [0-9]+:|LoopMismatchWarning: |^[a-zA-Z._]+Error: '",
        (r"^(job \d+: .*)$", *_MESSAGE, *_EXCEPTION),
    ),
    "lg109_fix": Run("LOOPGUARD=1 python lg109_fix_session_per_job.py", (r"^(.*)$",)),
    "lg111_raw": Run(
        "python lg111_module_lock_bug.py 2>&1 | grep -E '^(job [0-9]+:|[a-zA-Z._]+Error: )'",
        (
            r"^(job \d+: .*)$",
            r"^(RuntimeError: <asyncio\.locks\.Lock object at) ",
            r"(> is bound .*)$",
        ),
    ),
    "lg111_guarded": Run("LOOPGUARD=1 python lg111_module_lock_bug.py 2>&1 | tail -n 8", _MESSAGE),
    "lg111_warn": Run(
        "LOOPGUARD=warn python lg111_module_lock_bug.py 2>&1"
        " | grep -E '^job [0-9]+:|LoopMismatchWarning: '",
        (r"^(job \d+: .*)$", *_MESSAGE),
    ),
    "lg111_fix": Run("LOOPGUARD=1 python -X dev lg111_fix_lock_per_job.py", (r"^(.*)$",)),
    "lg111_tests_raw": Run(f"{_ERRORS} lg111_tests_bug.py", _FAILED + _OUTCOME),
    "lg111_tests_guarded": Run(
        f"{_ERRORS} lg111_tests_bug.py --loopguard", _MESSAGE + _SUMMARY + _OUTCOME
    ),
    # The README's "before and after": what scripts/demo runs once its server is up.
    "demo": Run(
        "python examples/demo.py",
        (*_MESSAGE, *_SUMMARY, *_FAILED, *_OUTCOME, r"^(exit codes: .*)$"),
        cwd=".",
    ),
    "fix_header": Run(
        "pytest -p no:cacheprovider lg101_cached_fix_fixture.py --loopguard",
        (r"^(loopguard: .*)$", *_OUTCOME),
    ),
    "jobs_fix": Run("LOOPGUARD=1 python lg101_jobs_fix_dispose.py", (r"^(.*)$",)),
    # stdout discarded: the records are on stderr, before the traceback.
    "structlog_default": Run(
        "LOOPGUARD=1 python lg101_jobs_bug.py 2>&1 >/dev/null | head -n 2",
        (r"^(job \d+: .*)$", r"(\[(?:error|warning)\s*\] loopguard\.\w+)"),
    ),
    "sink_failure": Run(
        "LOOPGUARD=1 LOOPGUARD_LOG_FILE=/dev/full python lg101_jobs_bug.py 2>&1 >/dev/null"
        " | grep '^loopguard: '",
        (r"^(loopguard: .*)$",),
    ),
    "log_file": Run(
        f"LOOPGUARD_LOG_FILE=loopguard.jsonl {_PYTEST} --tb=no"
        " lg101_cached_bug.py lg101_session_bug.py --loopguard",
        _OUTCOME,
    ),
    "log_line": Run(
        "grep -m 1 loopguard.loop_mismatch loopguard.jsonl | python -m json.tool",
        (r'^    "(\w+)": ',),
    ),
    "lg110_raw": Run(
        "python lg110_jobs_bug.py 2>&1 | grep -E '^(job [0-9]+:|[a-zA-Z._]+Error: )'",
        (r"^(job \d+: .*)$", r"^([\w.]+Error): "),
    ),
    "lg110_guarded": Run("LOOPGUARD=1 python lg110_jobs_bug.py 2>&1 | tail -n 9", _MESSAGE),
    "lg110_warn": Run(
        "LOOPGUARD=warn python lg110_jobs_bug.py 2>&1 | grep -E '^job|LoopMismatchWarning: '",
        (r"^(job \d+: .*)$", *_MESSAGE),
    ),
    "lg110_fix": Run("LOOPGUARD=1 python -X dev lg110_fix_client_per_job.py", (r"^(.*)$",)),
    "report_table": Run('loopguard report loopguard.jsonl; echo "exit status: $?"', (r"^(.*)$",)),
    "report_markdown": Run(
        "loopguard report --format markdown --fail-on never loopguard.jsonl", (r"^(.*)$",)
    ),
}


# asyncio's debug mode (-X dev) logs a step that took over 0.1 s: on a busy machine, any step.
SLOW_CALLBACK = re.compile(r"^Executing <.*> took \d+\.\d+ seconds\n", re.M)


def normalize(text: str) -> str:
    """Blank out what differs between two runs of the same command: URLs, paths, timings."""
    text = SLOW_CALLBACK.sub("", text)
    text = re.sub(r"postgresql(?:\+asyncpg)?://\S+?(?=[\s\]`|'])", "<URL>", text)
    text = re.sub(r"redis://127\.0\.0\.1:\d+/\d+", "<REDIS_URL>", text)
    text = re.sub(r"(?:/[^\s:/]+)+/(?=lg\d{3}_\w+\.py)", "", text)
    text = re.sub(r"-portal-[0-9a-f]+\b", "-portal-<id>", text)  # anyio's portal threads
    text = re.sub(r"http://127\.0\.0\.1:\d+", "<HTTP_URL>", text)
    return re.sub(r" in \d+\.\d+s\b", " in <T>s", text)


def essentials(name: str, output: str) -> list[str]:
    """The lines of ``output`` that must not change while the code and examples do not."""
    patterns = [re.compile(p) for p in RUNS[name].keep]
    kept = []
    for line in normalize(output).splitlines():
        for pattern in patterns:
            match = pattern.search(line)
            if match:
                kept.append(match.group(1).rstrip())
    return kept


def machine_paths(workdir: Path, dsn: str) -> list[tuple[str, str]]:
    """What a captured output would say about this machine, and what the pages show instead:
    the virtualenv's and Python's library directories, the temporary directory the examples
    run in, the checkout, the server's socket directory.  Most specific first."""
    paths = sysconfig.get_paths()
    pairs = [
        (paths["purelib"], ".../site-packages"),
        (paths["platlib"], ".../site-packages"),
        (paths["stdlib"], f".../{Path(paths['stdlib']).name}"),
        (paths["platstdlib"], f".../{Path(paths['platstdlib']).name}"),
        (str(workdir.parent), "..."),
        (str(ROOT), "..."),
    ]
    socket_dir = parse_qs(urlsplit(dsn).query).get("host", [""])[0]
    if socket_dir.startswith("/"):  # a unix socket in a temporary directory: name it so
        placeholder = str(Path(socket_dir).parent / "pg-socket-dir")
        pairs += [
            (quote(socket_dir, safe=""), quote(placeholder, safe="")),
            (socket_dir, placeholder),
        ]
    resolved = [(os.path.realpath(path), shown) for path, shown in pairs]
    return [(path, shown) for path, shown in pairs + resolved if path not in ("", "/")]


def scrub(text: str, paths: list[tuple[str, str]]) -> str:
    for path, shown in paths:
        text = text.replace(path, shown)
    return text


def run_all(workdir: Path, dsn: str, redis_url: str = "") -> dict[str, str]:
    """Run every command of RUNS, in order, in a fresh copy of docs_examples/ at ``workdir``
    (``dsn``: the PostgreSQL server's, ``redis_url``: the redis server's), and scrub this
    machine's paths from the outputs."""
    shutil.copytree(EXAMPLES, workdir, dirs_exist_ok=True, ignore=_ignore)
    env = {
        k: v
        for k, v in os.environ.items()
        # CI/BUILD_NUMBER make pytest print untruncated summaries: the pages show a terminal.
        if not k.startswith(("LOOPGUARD", "PYTEST_")) and k not in ("COLUMNS", "CI", "BUILD_NUMBER")
    }
    bin_dir = str(Path(sys.executable).parent)
    if str(ROOT / "tools") not in sys.path:
        sys.path.insert(0, str(ROOT / "tools"))
    from httpserver import throwaway_http_server
    from pgserver import ENV_DSN, sqlalchemy_url

    env[ENV_DSN] = dsn  # for examples/demo.py
    with throwaway_http_server() as http_url:
        outputs = _run_each(workdir, env, sqlalchemy_url(dsn), http_url, redis_url, bin_dir)
    paths = machine_paths(workdir, dsn)
    return {name: scrub(output, paths) for name, output in outputs.items()}


def _run_each(
    workdir: Path,
    env: dict[str, str],
    database_url: str,
    http_url: str,
    redis_url: str,
    bin_dir: str,
) -> dict[str, str]:
    env.update(
        HTTP_URL=http_url,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        COLUMNS="80",
        PYTHONDONTWRITEBYTECODE="1",
    )
    outputs = {}
    for name, run in RUNS.items():
        done = subprocess.run(
            ["bash", "-c", run.command],
            cwd=workdir if run.cwd is None else ROOT / run.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        printed = SLOW_CALLBACK.sub("", done.stdout).rstrip()
        outputs[name] = f"$ {run.command}\n{printed}"
    return outputs


CAPTURE_STACK = (
    "sqlalchemy",
    "asyncpg",
    "httpx",
    "aiohttp",
    "redis",
    "pytest",
    "pytest-asyncio",
    "structlog",
)


def versions() -> str:
    """The stack the outputs were captured with, as the pages say it."""
    from importlib.metadata import version

    import loopguard

    python = ".".join(map(str, sys.version_info[:3]))
    stack = ", ".join(f"{name} {version(name)}" for name in CAPTURE_STACK)
    return f"loopguard {loopguard.__version__}, Python {python}, {stack}"


def _ignore(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".jsonl")]


# -- reference tables rendered from the code -----------------------------------------------


def _rst_to_md(text: str) -> str:
    """The docstrings' reST bits that matter here: ``code`` and :role:`name`."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _paragraphs(doc: Optional[str]) -> list[str]:
    text = inspect.cleandoc(doc or "")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def ref_env() -> str:
    from loopguard import _config

    by_mode: dict[Optional[str], list[str]] = {}
    for text, mode in _config._TEXT_VALUES.items():
        by_mode.setdefault(mode, []).append(f"`{text}`")
    rows = [
        "| variable | values | effect |",
        "|---|---|---|",
    ]
    for mode, spellings in by_mode.items():
        effect = f"mode `{mode}`" if mode else "off: plugin off, a bare `install()` a no-op"
        rows.append(f"| `{_config.MODE_ENV}` | {', '.join(spellings)} | {effect} |")
    rows.append(
        f"| `{_config.LOG_FILE_ENV}` | a file path | also append every record to this file, "
        "one JSON object per line |"
    )
    return "\n".join(rows)


class _RecordingParser:
    """Stands in for pytest's parser to list what the plugin registers."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.inis: list[tuple[str, str, Any]] = []

    def getgroup(self, name: str, *args: Any, **kwargs: Any) -> _RecordingParser:
        return self

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.options.append((names, attrs))

    def addini(self, name: str, help: str, *args: Any, **kwargs: Any) -> None:
        self.inis.append((name, help, kwargs.get("default")))


def ref_pytest() -> str:
    from loopguard import pytest_plugin

    parser = _RecordingParser()
    pytest_plugin.pytest_addoption(parser)  # type: ignore[arg-type]
    rows = ["| setting | where | help |", "|---|---|---|"]
    for names, attrs in parser.options:
        flag = attrs.get("action") == "store_true"
        shown = names[0] if flag else f"{names[0]}={attrs.get('metavar', 'VALUE')}"
        rows.append(f"| `{shown}` | command line | {attrs['help']} |")
    for name, help_text, _default in parser.inis:
        where = "ini file (`pytest.ini`, `[tool.pytest.ini_options]`, ...)"
        rows.append(f"| `{name} = MODE` | {where} | {help_text} |")
    precedence = _paragraphs(pytest_plugin.__doc__)[1]
    return "\n".join(rows) + "\n\n" + _rst_to_md(precedence)


def _signature(func: Callable[..., Any]) -> str:
    """The signature as written in the source (annotations are strings there)."""
    parts = []
    star_done = False
    for param in inspect.signature(func).parameters.values():
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = param.name
        if param.annotation is not param.empty:
            text += f": {param.annotation}"
        if param.default is not param.empty:
            text += f" = {param.default!r}"
        parts.append(text)
    returns = inspect.signature(func).return_annotation
    arrow = f" -> {returns}" if returns is not inspect.Signature.empty else ""
    return f"loopguard.{func.__name__}({', '.join(parts)}){arrow}"


def _google_sections(doc: str) -> Iterator[str]:
    """Markdown lines of a Google-style docstring: text, then Args/Raises as lists."""
    section = None
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Raises:", "Returns:"):
            section = stripped[:-1]
            yield ""
            yield f"*{section}:*"
            yield ""
        elif section and re.match(r"^    \S", line):
            name, _, text = stripped.partition(": ")
            yield f"- `{name}`: {text}"
        elif section and stripped:
            yield f"  {stripped}"  # continuation of the previous item
        else:
            yield stripped
    yield ""


def ref_api(names: tuple[str, ...] = ("install", "uninstall", "is_installed", "mode")) -> str:
    import loopguard

    out = []
    for name in names:
        func = getattr(loopguard, name)
        out.append(f"### `{name}()`\n\n```python\n{_signature(func)}\n```\n")
        text = "\n".join(_google_sections(func.__doc__ or ""))
        out.append(re.sub(r"\n{3,}", "\n\n", _rst_to_md(text)).strip() + "\n")
    return "\n".join(out).rstrip()


def ref_exceptions() -> str:
    import loopguard
    from loopguard import _errors

    rows = ["| class | is a | raised or emitted when |", "|---|---|---|"]
    for name in loopguard.__all__:
        cls = getattr(loopguard, name)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            continue
        bases = ", ".join(
            f"`{b.__name__}`" if b.__module__ == "builtins" else f"`loopguard.{b.__name__}`"
            for b in cls.__bases__
        )
        summary = _rst_to_md(_paragraphs(cls.__doc__)[0])
        rows.append(f"| `loopguard.{name}` | {bases} | {summary} |")
    fields = ", ".join(f"`{f}`" for f in _errors._RECORD_FIELDS)
    return (
        "\n".join(rows)
        + "\n\n`LoopMismatchError` attributes (the same facts as the message; `None` when "
        f"unknown): {fields}, and `record`, the whole log record as a dict."
    )


def ref_cli() -> str:
    """Every ``loopguard`` subcommand: usage, description, arguments and epilog."""
    from loopguard import _cli

    parser = _cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, sub in commands.choices.items():
        arguments = [a for a in sub._actions if a.dest != "help"]
        usage = sub.usage or " ".join(
            [f"loopguard {name}"]
            + [f"[{_cli_name(a)}]" for a in arguments if a.option_strings]
            + [_cli_name(a) for a in arguments if not a.option_strings]
        )
        rows = ["| argument | values | default | meaning |", "|---|---|---|---|"]
        for action in arguments:
            values = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
            default = f"`{action.default}`" if action.default is not None else ""
            meaning = (action.help or "").replace('"-"', "`-`")
            rows.append(f"| `{_cli_name(action)}` | {values} | {default} | {meaning} |")
        description = "\n\n".join(_paragraphs(sub.description))
        out += [f"### `loopguard {name}`", "", f"```text\n{usage}\n```", ""]
        out += [_rst_to_md(description), "", *rows, ""]
        for paragraph in _paragraphs(sub.epilog):  # "exit status: ..." -> "Exit status: ..."
            out += [_rst_to_md(paragraph[:1].upper() + paragraph[1:]), ""]
    return "\n".join(out).rstrip()


def _cli_name(action: argparse.Action) -> str:
    if action.option_strings:
        metavar = action.metavar or action.dest.upper()
        return f"{action.option_strings[0]} {metavar}"
    if action.nargs == argparse.REMAINDER:
        return f"{action.metavar or action.dest.upper()}..."
    return f"{action.metavar}..." if action.nargs == "+" else str(action.metavar)


def _docstring_md(doc: Optional[str], skip: int = 0) -> str:
    """A module docstring as Markdown, without its first ``skip`` lines: a list item's
    continuation lines joined to it, reST's ``code`` and :role:`name` as Markdown code."""
    lines: list[str] = []
    for line in inspect.cleandoc(doc or "").splitlines()[skip:]:
        if line.startswith("  ") and lines and lines[-1].startswith("- "):
            lines[-1] += " " + line.strip()  # continuation of a list item
        else:
            lines.append(line.strip())
    text = "\n".join(lines).strip()
    return _rst_to_md(re.sub(r"  +", " ", text))


def ref_hooks() -> str:
    """The SQLAlchemy integration's module docstring: where it hooks and why."""
    from loopguard.integrations import _sqlalchemy

    text = _docstring_md(_sqlalchemy.__doc__, skip=2)
    return text.replace("Where it hooks, and why each hook is the one it is:\n", "")


def ref_asyncpg_hooks() -> str:
    """The raw asyncpg integration's module docstring: what it patches and why."""
    from loopguard.integrations import _asyncpg

    return _docstring_md(_asyncpg.__doc__)


def ref_secrets() -> str:
    """What the ``url`` of messages and records masks: the _secrets module docstring."""
    from loopguard import _secrets

    return _docstring_md(_secrets.__doc__, skip=2)


def ref_loop_scopes() -> str:
    """The pytest loop-scope check's module docstring (LG105), without its title line."""
    from loopguard import _pytest_scopes

    text = _docstring_md(_pytest_scopes.__doc__, skip=2)
    return re.sub(r"\s*\(scenario \d+\s+of\s+the notes\)", "", text)


def ref_autoload() -> str:
    """The start-up hook's module docstring: how LOOPGUARD activates loopguard in programs."""
    from loopguard import _autoload

    return _rst_to_md("\n\n".join(_paragraphs(_autoload.__doc__)))


def ref_causes() -> str:
    from loopguard._resource_causes import ENGINE

    rows = ["| `cause` | likely cause (as the message says it) | fix (as the message says it) |"]
    rows.append("|---|---|---|")
    for key, (cause, fix) in ENGINE.items():
        rows.append(f"| `{key}` | {cause} | {fix} |")
    return "\n".join(rows)


def ref_primitive_causes() -> str:
    """LG111's causes, worded for a lock (the other primitives get their own noun)."""
    from loopguard._primitive_causes import primitive_causes

    rows = ["| `cause` | likely cause (as the message says it) | fix (as the message says it) |"]
    rows.append("|---|---|---|")
    for key, (cause, fix) in primitive_causes("lock").items():
        rows.append(f"| `{key}` | {cause} | {fix} |")
    return "\n".join(rows)


def ref_psycopg_pool_causes() -> str:
    from loopguard._resource_causes import PSYCOPG_POOL

    rows = ["| `cause` | likely cause (as the message says it) | fix (as the message says it) |"]
    rows.append("|---|---|---|")
    for key, (cause, fix) in PSYCOPG_POOL.items():
        rows.append(f"| `{key}` | {cause} | {fix} |")
    return "\n".join(rows)


def ref_primitives_hooks() -> str:
    """The asyncio primitives integration's module docstring: what it patches and why."""
    from loopguard.integrations import _primitives

    return _docstring_md(_primitives.__doc__)


def ref_psycopg_pool_hooks() -> str:
    """The psycopg_pool integration's module docstring: what it patches and why."""
    from loopguard.integrations import _psycopg_pool

    return _docstring_md(_psycopg_pool.__doc__)


def ref_patterns() -> str:
    """The causes that name a pattern (``_pattern_causes.PATTERNS``), in an engine's words."""
    from loopguard._causes import cause_for
    from loopguard._pattern_causes import PATTERNS

    rows = ["| `cause` | likely cause (as the message says it) | fix (as the message says it) |"]
    rows.append("|---|---|---|")
    for key in PATTERNS:
        cause = cause_for("SQLAlchemy AsyncEngine", key, "`{created_by}`")
        assert cause is not None
        rows.append(f"| `{key}` | {cause.text} | {cause.fix} |")
    return "\n".join(rows)


def ref_asyncpg_causes() -> str:
    from loopguard._resource_causes import ASYNCPG_CONNECTION, ASYNCPG_POOL

    rows = [
        "| `cause` | for | likely cause (as the message says it) | fix (as the message says it) |"
    ]
    rows.append("|---|---|---|---|")
    for kind, causes in (("pool", ASYNCPG_POOL), ("connection", ASYNCPG_CONNECTION)):
        for key, (cause, fix) in causes.items():
            rows.append(f"| `{key}` | {kind} | {cause} | {fix} |")
    return "\n".join(rows)


def ref_held_causes() -> str:
    from loopguard._resource_causes import HELD_CONNECTION

    return _cause_table(HELD_CONNECTION)


def ref_api_tracking() -> str:
    """track(), check() and unbind(): the public API for any loop-bound object."""
    return ref_api(("track", "check", "unbind"))


def _cause_table(causes: dict[str, Any]) -> str:
    rows = ["| `cause` | likely cause (as the message says it) | fix (as the message says it) |"]
    rows.append("|---|---|---|")
    for key, (cause, fix) in causes.items():
        rows.append(f"| `{key}` | {cause} | {fix} |")
    return "\n".join(rows)


def ref_held_hooks() -> str:
    """The held-connection checks' module docstring, without its title line."""
    from loopguard.integrations import _sqlalchemy_held

    return _docstring_md(_sqlalchemy_held.__doc__, skip=2)


def ref_redis_causes() -> str:
    from loopguard._resource_causes import REDIS_CLIENT

    return _cause_table(REDIS_CLIENT)


def ref_httpx_causes() -> str:
    from loopguard._resource_causes import HTTPX_CLIENT

    return _cause_table(HTTPX_CLIENT)


def ref_aiohttp_causes() -> str:
    from loopguard._resource_causes import AIOHTTP_SESSION

    return _cause_table(AIOHTTP_SESSION)


def ref_client_hooks() -> str:
    """The httpx and aiohttp integrations' module docstrings: where they hook and why."""
    from loopguard.integrations import _aiohttp, _httpx

    return "\n\n".join(_docstring_md(module.__doc__) for module in (_httpx, _aiohttp))


def ref_redis_hooks() -> str:
    """The redis.asyncio integration's module docstring: what it patches and why."""
    from loopguard.integrations import _redis

    return _docstring_md(_redis.__doc__)


REFERENCE: dict[str, Callable[[], str]] = {
    "env": ref_env,
    "api_tracking": ref_api_tracking,
    "pytest": ref_pytest,
    "api": ref_api,
    "exceptions": ref_exceptions,
    "cli": ref_cli,
    "causes": ref_causes,
    "asyncpg_causes": ref_asyncpg_causes,
    "held_causes": ref_held_causes,
    "held_hooks": ref_held_hooks,
    "patterns": ref_patterns,
    "redis_causes": ref_redis_causes,
    "redis_hooks": ref_redis_hooks,
    "primitive_causes": ref_primitive_causes,
    "primitives_hooks": ref_primitives_hooks,
    "psycopg_pool_causes": ref_psycopg_pool_causes,
    "psycopg_pool_hooks": ref_psycopg_pool_hooks,
    "hooks": ref_hooks,
    "asyncpg_hooks": ref_asyncpg_hooks,
    "loop_scopes": ref_loop_scopes,
    "secrets": ref_secrets,
    "autoload": ref_autoload,
    "httpx_causes": ref_httpx_causes,
    "aiohttp_causes": ref_aiohttp_causes,
    "client_hooks": ref_client_hooks,
}


# -- `loopguard explain`'s texts, from the error page -----------------------------------------

EXPLANATIONS = ROOT / "loopguard" / "explanations"
ERRORS_PAGE = DOCS / "errors.md"
TEXT_WIDTH = 79
_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^(#{2,6}) (.+)$")
_ITEM = re.compile(r"^(?:- |\d+\. )")
_UNDERLINE = {2: "=", 3: "-"}  # deeper headings: "~"


def code_sections(markdown: str) -> dict[str, list[str]]:
    """The lines of each ``## CODE`` section of the error page (headings in code blocks are
    code), by code."""
    sections: dict[str, list[str]] = {}
    current: Optional[list[str]] = None
    in_fence = False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and line.startswith("## "):
            current = sections.setdefault(line[3:].strip().upper(), [])
            continue
        if current is not None:
            current.append(line)
    return sections


def _link(match: re.Match[str]) -> str:
    """A Markdown link as terminal text: the text, and the address unless it is on the page."""
    text, target = match[1], match[2]
    if target.startswith("#"):
        return text
    if not re.match(r"[a-z]+://", target):  # a page of the docs, or a file of the repository
        target = os.path.normpath(os.path.join("docs", target))
    return f"{text} ({target})"


def _inline(text: str) -> str:
    """Links as text and address, no emphasis marks (code spans stay as they are)."""
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", _link, text)
    spans: list[str] = []

    def hide(match: re.Match[str]) -> str:
        spans.append(match[0])
        return f"\0{len(spans) - 1}\0"

    text = re.sub(r"`[^`]*`", hide, text)
    text = re.sub(r"\*\*(.+?)\*\*|(?<!\w)\*(\S(?:.*?\S)?)\*(?!\w)", r"\1\2", text)
    return re.sub(r"\0(\d+)\0", lambda m: spans[int(m[1])], text)


def _fill(text: str, indent: str = "", first: Optional[str] = None) -> str:
    return textwrap.fill(
        _inline(" ".join(text.split())),
        TEXT_WIDTH,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _table(rows: list[str]) -> list[str]:
    """A table as a list: each row's first cell, then its other cells under their column's
    name (a terminal is too narrow for the prose in the columns)."""
    header = _cells(rows[0])
    out = []
    for row in rows[2:]:
        first, *rest = _cells(row)
        out.append(_fill(first, "  ", "- "))
        for name, cell in zip(header[1:], rest):
            out.append(_fill(f"{name}: {cell}", "      ", "    "))
    return out


def terminal_text(code: str, lines: list[str]) -> str:
    """One section of the error page as plain text: no gen markers, headings underlined,
    paragraphs wrapped, tables as lists, code and outputs indented and kept as they are."""
    from loopguard._errors import docs_section

    out = [code, _UNDERLINE[2] * len(code), ""]
    paragraph: list[str] = []
    table: list[str] = []
    fence: Optional[list[str]] = None

    def flush() -> None:
        if paragraph:
            text = " ".join(paragraph)
            item = _ITEM.match(text)
            out.extend([_fill(text, "  ", "") if item else _fill(text), ""])
            paragraph.clear()
        if table:
            out.extend([*_table(table), ""])
            table.clear()

    for line in lines:
        if fence is not None:
            if line.startswith("```"):
                out.extend([*fence, ""])
                fence = None
            else:
                fence.append(f"    {line}".rstrip())
        elif _FENCE.match(line):
            flush()
            fence = []
        elif re.match(r"^<!--.*-->$", line.strip()):  # the gen markers
            flush()
        elif _HEADING.match(line):
            flush()
            level, title = _HEADING.match(line).groups()  # type: ignore[union-attr]
            title = _inline(title)
            out.extend([title, _UNDERLINE.get(len(level), "~") * len(title), ""])
        elif line.startswith("|"):
            if paragraph:
                flush()
            table.append(line)
        elif not line.strip():
            flush()
        else:
            if table or (paragraph and _ITEM.match(line)):
                flush()
            paragraph.append(line.strip())
    flush()
    out.append(f"(The same, with links: {docs_section(code)}.)")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def explanations(page: Optional[str] = None) -> dict[str, str]:
    """``{code: text}`` for each code of the table that has a section on the error page."""
    from loopguard._codes import CODES

    sections = code_sections(page if page is not None else ERRORS_PAGE.read_text("utf-8"))
    return {code: terminal_text(code, sections[code]) for code in CODES if code in sections}


def stale_explanations() -> list[str]:
    """The shipped texts that differ from the error page's sections, or have no code."""
    wanted = explanations()
    shipped = {p.stem: p.read_text("utf-8") for p in EXPLANATIONS.glob("*.txt")}
    return sorted(c for c in wanted.keys() | shipped.keys() if wanted.get(c) != shipped.get(c))


def write_explanations() -> None:
    wanted = explanations()
    EXPLANATIONS.mkdir(exist_ok=True)
    for path in EXPLANATIONS.glob("*.txt"):
        if path.stem not in wanted:
            path.unlink()
            print(f"removed {path.relative_to(ROOT)}")
    for code, text in wanted.items():
        path = EXPLANATIONS / f"{code}.txt"
        if not path.is_file() or path.read_text("utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"rewrote {path.relative_to(ROOT)}")


# -- rewriting the pages -------------------------------------------------------------------


# Outputs start with the command ("$ ..."): highlighted as a shell session, the command apart
# from what it printed (on the site and on GitHub).
OUTPUT_LANGUAGE = "console"


def render(kind: str, arg: str, body: str, outputs: Optional[dict[str, str]]) -> str:
    if kind == "ref":
        return REFERENCE[arg]() + "\n"
    if kind == "file":
        source = (EXAMPLES / arg).read_text(encoding="utf-8").rstrip()
        return f"`docs_examples/{arg}`\n\n```python\n{source}\n```\n"
    if kind == "captured" and arg == "versions":
        return body if outputs is None else outputs["versions"] + "\n"
    if kind == "output":
        if arg not in RUNS:
            raise KeyError(f"no command named {arg!r} in RUNS")
        output = _unfenced(body) if outputs is None else outputs[arg]
        return f"```{OUTPUT_LANGUAGE}\n{output}\n```\n" if output else ""
    raise KeyError(f"unknown block kind {kind!r}")


def _unfenced(body: str) -> str:
    """An output block's text without its code fence."""
    return re.sub(r"^```\w*\n|```$", "", body.strip()).strip()


def pages() -> list[Path]:
    """The pages with generated parts: the docs site's, and the README."""
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


def rendered(page: Path, outputs: Optional[dict[str, str]] = None) -> str:
    text = page.read_text(encoding="utf-8")

    def replace(match: re.Match[str]) -> str:
        body = render(match["kind"], match["arg"], match["body"], outputs)
        return match["open"] + body + match["close"]

    return BLOCK.sub(replace, text)


def blocks(page: Path) -> dict[str, str]:
    """``{"kind:arg": body}`` of one page."""
    text = page.read_text(encoding="utf-8")
    return {f"{m['kind']}:{m['arg']}": m["body"] for m in BLOCK.finditer(text)}


def shown_output(name: str) -> str:
    """The output of ``RUNS[name]`` as a page shows it (without the code fence)."""
    for page in pages():
        body = blocks(page).get(f"output:{name}")
        if body is not None:
            return _unfenced(body)
    raise KeyError(f"no page shows output:{name}")


def stale_pages() -> list[str]:
    return [
        str(p.relative_to(ROOT)) for p in pages() if rendered(p) != p.read_text(encoding="utf-8")
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale")
    parser.add_argument("--capture", action="store_true", help="rerun RUNS (needs PostgreSQL)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages() + [
            f"{EXPLANATIONS.relative_to(ROOT)}/{c}.txt" for c in stale_explanations()
        ]
        for name in stale:
            print(f"{name} is stale: run .venv/bin/python docs/_gen.py", file=sys.stderr)
        return 1 if stale else 0
    outputs = None
    if args.capture:
        sys.path.insert(0, str(ROOT / "tools"))
        from pgserver import ENV_DSN
        from redisserver import throwaway_redis

        with tempfile.TemporaryDirectory() as workdir, throwaway_redis() as redis_url:
            outputs = run_all(Path(workdir) / "examples", os.environ[ENV_DSN], redis_url)
        outputs["versions"] = "Captured with " + versions() + "."
    for page in pages():
        new = rendered(page, outputs)
        if new != page.read_text(encoding="utf-8"):
            page.write_text(new, encoding="utf-8")
            print(f"rewrote {page.relative_to(ROOT)}")
    write_explanations()  # from the error page as just written
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
