"""The ``loopguard`` command: ``report`` (summarising LOOPGUARD_LOG_FILE records), ``--version``,
the help texts and ``loopguard run``'s errors, run as a real command.

The tests run the command in a subprocess, both as ``python -m loopguard`` and as the
installed ``loopguard`` console script.  Most records are written by hand in the shape of real
ones (copied from a run of the docs' examples), so no database is needed; the log of
``real_log`` is written by loopguard itself, running the docs' examples against the real
server.  The timing and memory tests call the command in this process, to measure it alone.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from pgserver import sqlalchemy_url
from test_docs import EXAMPLES, needs_documented_stack

import loopguard
from loopguard._codes import CODES
from loopguard._log import SCHEMA_VERSION
from loopguard._resource_causes import ASYNCPG_CONNECTION, ASYNCPG_POOL, ENGINE

Run = Callable[..., "subprocess.CompletedProcess[str]"]

URL = "postgresql+asyncpg://postgres@/postgres?host=%2Ftmp%2Floopguard-pg-vxaatmzu&port=5432"
JSON_KEYS = [
    "code",
    "created_at",
    "created_in",
    "url",
    "resource",
    "count",
    "actions",
    "first_test",
    "last_test",
    "bound_during",
    "loops",
    "causes",
]


def record(**overrides: Any) -> dict[str, Any]:
    """One raised LG101 record, as loopguard writes it to LOOPGUARD_LOG_FILE."""
    fields: dict[str, Any] = {
        "pid": 7641,
        "schema": SCHEMA_VERSION,
        "code": "LG101",
        "action": "raised",
        "resource": "SQLAlchemy AsyncEngine",
        "url": URL,
        "pool_class": "AsyncAdaptedQueuePool",
        "created_at": "src/configs/db.py:12",
        "created_in": "get_async_engine",
        "created_during": None,
        "bound_during": "tests/test_users.py::test_create_user (call)",
        "used_at": "tests/test_users.py:14 in test_list_users",
        "used_during": "tests/test_users.py::test_list_users (call)",
        "owner_loop_id": 1,
        "owner_loop_closed": True,
        "current_loop_id": 2,
        "cause": "closed-loop-test",
        "event": "loopguard.loop_mismatch",
        "level": "error",
        "timestamp": "2026-11-25T12:01:06.073415Z",
    }
    if overrides.get("action") == "warned":
        fields.update(level="warning", released=1, sockets_closed=1)
    fields.update(overrides)
    return fields


def lg104(**overrides: Any) -> dict[str, Any]:
    """A dispose on a foreign loop (LG104), as loopguard writes it."""
    fields = record(
        code="LG104",
        action="released",
        event="loopguard.dispose_on_foreign_loop",
        level="warning",
        released=1,
        sockets_closed=1,
    )
    del fields["cause"]
    fields.update(overrides)
    return fields


def lg106(**overrides: Any) -> dict[str, Any]:
    """A loop closed with connections still pooled (LG106), as loopguard writes it."""
    fields = record(
        code="LG106",
        action="reported",
        event="loopguard.loop_closed_with_connections",
        level="warning",
        current_loop_id=1,
        owner_loop_closed=False,
        held=1,
    )
    del fields["cause"]
    fields.update(overrides)
    return fields


RECORD_OF_ACTION = {"raised": record, "warned": record, "released": lg104, "reported": lg106}


def used_by(test: str, current_loop_id: int, **overrides: Any) -> dict[str, Any]:
    """A record of the engine used by ``test`` on loop ``current_loop_id``."""
    return record(
        used_during=f"tests/test_users.py::{test} (call)",
        used_at=f"tests/test_users.py:14 in {test}",
        current_loop_id=current_loop_id,
        **overrides,
    )


def write_log(path: Path, *lines: Any) -> Path:
    """Write records (dicts) and raw lines (str) to ``path``, one per line."""
    text = "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def _console_script() -> str:
    script = Path(sysconfig.get_path("scripts")) / "loopguard"
    assert script.exists(), "run `.venv/bin/pip install -e .` to install the console script"
    return str(script)


@pytest.fixture(params=["python -m loopguard", "console script"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """Run ``loopguard ARGS...`` (through -m or the console script) in tmp_path."""
    command = [sys.executable, "-m", "loopguard"] if request.param.startswith("python") else []
    command = command or [_console_script()]

    def run(*args: str, stdin: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
        )

    return run


def report_json(run: Run, *args: str) -> tuple[list[dict[str, Any]], Any]:
    """The parsed ``--format json`` output and the completed process."""
    result = run("report", "--format", "json", *args)
    return json.loads(result.stdout), result


def test_groups_records_by_engine_and_counts_them(run: Run, tmp_path: Path) -> None:
    """Records group by (code, created_at, created_in, url), in file order, with their facts."""
    write_log(
        tmp_path / "log.jsonl",
        used_by("test_list_users", 2),
        record(created_at="src/other.py:3", created_in="make_engine", cause="idle-loop-test"),
        used_by("test_delete_user", 3),
        used_by("test_update_user", 4, action="warned", cause="idle-loop-test"),
        record(url="postgresql+asyncpg://app@db/other"),
    )
    groups, result = report_json(run, "log.jsonl")
    assert result.returncode == 1, result.stderr
    assert [(g["created_at"], g["url"], g["count"]) for g in groups] == [
        ("src/configs/db.py:12", URL, 3),
        ("src/other.py:3", URL, 1),
        ("src/configs/db.py:12", "postgresql+asyncpg://app@db/other", 1),
    ]
    first = groups[0]
    assert first["code"] == "LG101"
    assert first["created_in"] == "get_async_engine"
    assert first["actions"] == {"raised": 2, "warned": 1}
    assert first["first_test"] == "tests/test_users.py::test_list_users (call)"
    assert first["last_test"] == "tests/test_users.py::test_update_user (call)"
    assert first["bound_during"] == ["tests/test_users.py::test_create_user (call)"]
    assert first["loops"] == [
        {"pid": 7641, "owner_loop_id": 1, "current_loop_id": n} for n in (2, 3, 4)
    ]
    assert first["causes"] == [
        {"cause": key, "text": ENGINE[key].text, "fix": ENGINE[key].fix}
        for key in ("closed-loop-test", "idle-loop-test")
    ]


def test_json_output_has_stable_keys(run: Run, tmp_path: Path) -> None:
    """Every group object has the same keys in the same order, even with null fields."""
    write_log(
        tmp_path / "log.jsonl",
        record(),
        record(created_at=None, created_in=None, used_during=None, bound_during=None),
    )
    groups, _ = report_json(run, "log.jsonl")
    assert [list(group) for group in groups] == [JSON_KEYS, JSON_KEYS]
    unknown_site = groups[1]
    assert unknown_site["created_at"] is None
    assert unknown_site["first_test"] is None
    assert unknown_site["bound_during"] == [None]


def test_table_is_the_default_format(run: Run, tmp_path: Path) -> None:
    """The table: a summary line, an aligned index of engines, then each engine's details."""
    write_log(
        tmp_path / "log.jsonl",
        used_by("test_list_users", 2),
        used_by("test_delete_user", 3),
        record(created_at=None, created_in=None, action="warned", pid=7700),
    )
    result = run("report", "log.jsonl")
    lines = result.stdout.splitlines()
    assert lines[0] == "3 loopguard records (2 raised, 1 warned) from 2 engines"
    assert lines[2:5] == [
        "#  COUNT  ACTIONS   CODE   CREATED",
        "1  2      2 raised  LG101  src/configs/db.py:12 in get_async_engine",
        "2  1      1 warned  LG101  creation site unknown",
    ]
    assert "[1] LG101 src/configs/db.py:12 in get_async_engine" in lines
    assert "    first test:   tests/test_users.py::test_list_users (call)" in lines
    assert "    last test:    tests/test_users.py::test_delete_user (call)" in lines
    assert "    bound during: tests/test_users.py::test_create_user (call)" in lines
    assert "    loops:        #1->#2, #1->#3" in lines
    assert f"    engine:       {URL}" in lines
    assert (
        "    docs:         `loopguard explain LG101`, or LG101 on the Error codes page of the docs"
    ) in lines
    flat = " ".join(result.stdout.split())
    assert f"cause: closed-loop-test: {ENGINE['closed-loop-test'].text}" in flat
    assert f"fix: {ENGINE['closed-loop-test'].fix}" in flat
    # Cause and fix are wrapped at 100 columns; a URL is never cut.
    assert max(len(line) for line in lines if not line.startswith("    engine:")) <= 100
    assert result.returncode == 1


def test_table_shortens_long_lists(run: Run, tmp_path: Path) -> None:
    """Table and markdown show three loops and binding tests; json keeps them all."""
    records = [
        used_by(f"test_{n}", n + 1, owner_loop_id=n, bound_during=f"t.py::test_{n - 1} (call)")
        for n in range(1, 7)
    ]
    write_log(tmp_path / "log.jsonl", *records)
    lines = run("report", "log.jsonl").stdout.splitlines()
    assert "    loops:        #1->#2, #2->#3, #3->#4, ... (+3 more)" in lines
    bound = "t.py::test_0 (call), t.py::test_1 (call), t.py::test_2 (call), ... (+3 more)"
    assert f"    bound during: {bound}" in lines
    assert (
        f"| `{bound}` | #1->#2, #2->#3, #3->#4, ... (+3 more) |"
        in run("report", "--format", "markdown", "log.jsonl").stdout
    )
    groups, _ = report_json(run, "log.jsonl")
    assert len(groups[0]["loops"]) == len(groups[0]["bound_during"]) == 6


def test_markdown_is_a_github_table(run: Run, tmp_path: Path) -> None:
    """A header row, a delimiter row and one row per engine; ``|`` in a cell is escaped."""
    write_log(
        tmp_path / "log.jsonl",
        used_by("test_list_users", 2),
        used_by("test_pick[a|b]", 3),
    )
    result = run("report", "--format", "markdown", "log.jsonl")
    lines = result.stdout.splitlines()
    assert lines[0] == "2 loopguard records (2 raised) from 1 engine"
    assert lines[2] == (
        "| # | Count | Actions | Code | Created | Engine | First test | Last test "
        "| Bound during | Loops | Cause | Fix |"
    )
    assert lines[3] == "|--:|--:|---|---|---|---|---|---|---|---|---|---|"
    assert len(lines) == 5
    row = lines[4]
    assert row.startswith(
        "| 1 | 2 | 2 raised | LG101 | `src/configs/db.py:12 in get_async_engine` |"
    )
    assert "| `tests/test_users.py::test_pick[a\\|b] (call)` |" in row
    assert row.replace("\\|", "").count("|") == lines[2].count("|")


@pytest.mark.parametrize(
    ("fail_on", "actions", "failing"),
    [
        (None, ["warned", "warned"], 0),
        (None, ["warned", "raised", "raised"], 2),
        ("raise", ["warned"], 0),
        ("raise", ["raised", "warned"], 1),
        ("warn", ["warned", "warned"], 2),
        ("warn", ["raised", "warned"], 2),
        ("never", ["raised", "warned"], 0),
        # LG104 (released) and LG106 (reported) are warnings: only --fail-on warn counts them.
        (None, ["released", "reported"], 0),
        ("raise", ["reported", "raised", "released"], 1),
        ("warn", ["released", "reported", "reported"], 3),
        ("never", ["released", "reported"], 0),
    ],
)
def test_fail_on(
    run: Run, tmp_path: Path, fail_on: Optional[str], actions: list[str], failing: int
) -> None:
    """Exit 1 only when records reach --fail-on (default raise: a raised one; warn: any record,
    whatever its action); never gives 0."""
    records = (RECORD_OF_ACTION[action](action=action) for action in actions)
    write_log(tmp_path / "log.jsonl", *records)
    option = ["--fail-on", fail_on] if fail_on else []
    result = run("report", *option, "log.jsonl")
    assert result.returncode == (1 if failing else 0), result.stderr
    gate = f"loopguard report: {failing} record(s) at or above --fail-on={fail_on or 'raise'}\n"
    assert result.stderr == (gate if failing else "")


def test_reads_stdin_for_dash(run: Run, tmp_path: Path) -> None:
    """``-`` reads the records from stdin, and can be mixed with files."""
    write_log(tmp_path / "log.jsonl", used_by("test_delete_user", 3))
    stdin = json.dumps(used_by("test_list_users", 2)) + "\n"
    result = run("report", "--format", "json", "-", "log.jsonl", stdin=stdin)
    (group,) = json.loads(result.stdout)
    assert group["count"] == 2
    assert group["first_test"] == "tests/test_users.py::test_list_users (call)"
    assert group["last_test"] == "tests/test_users.py::test_delete_user (call)"


def test_several_files_are_one_report(run: Run, tmp_path: Path) -> None:
    """Records of several files (xdist workers, CI jobs) group together, in argument order."""
    write_log(tmp_path / "a.jsonl", used_by("test_a", 2, pid=100))
    write_log(tmp_path / "b.jsonl", used_by("test_b", 2, pid=200), used_by("test_c", 3, pid=200))
    groups, result = report_json(run, "b.jsonl", "a.jsonl")
    assert result.returncode == 1
    (group,) = groups
    assert group["count"] == 3
    assert group["first_test"] == "tests/test_users.py::test_b (call)"
    assert group["last_test"] == "tests/test_users.py::test_a (call)"
    assert [loop["pid"] for loop in group["loops"]] == [200, 200, 100]
    table = run("report", "a.jsonl", "b.jsonl").stdout
    # Loop ids are counted per process: the table names the processes.
    assert "loops:        pid 100: #1->#2, pid 200: #1->#2, pid 200: #1->#3" in table


def test_missing_file_is_reported_and_exits_2(run: Run, tmp_path: Path) -> None:
    """A missing file gets a clear message; the other files are still reported; exit 2."""
    write_log(tmp_path / "log.jsonl", record(action="warned"))
    result = run("report", "missing.jsonl", "log.jsonl")
    assert result.returncode == 2
    assert (
        result.stderr == "loopguard report: cannot read missing.jsonl: No such file or directory\n"
    )
    assert result.stdout.startswith("1 loopguard record (1 warned) from 1 engine\n")

    only_missing = run("report", "missing.jsonl")
    assert only_missing.returncode == 2
    assert only_missing.stdout == "no loopguard records\n"


def test_truncated_line_is_reported_with_its_line_number(run: Run, tmp_path: Path) -> None:
    """A truncated or non-JSON line names file and line; the other records are still reported."""
    truncated = json.dumps(record())[:120]
    write_log(
        tmp_path / "log.jsonl",
        used_by("test_list_users", 2),
        truncated,
        "",
        "[1, 2]",
        used_by("test_delete_user", 3),
    )
    groups, result = report_json(run, "log.jsonl")
    assert result.returncode == 2
    assert [g["count"] for g in groups] == [2]
    errors = result.stderr.splitlines()
    assert errors[0].startswith("log.jsonl:2: not a JSON object (Unterminated string")
    assert errors[1] == "log.jsonl:4: not a JSON object (found list)"
    assert len(errors) == 3  # and the --fail-on line


def test_too_many_bad_lines_are_summed_up(run: Run, tmp_path: Path) -> None:
    """A file that is not a log at all gives ten messages and a count, not one per line."""
    write_log(tmp_path / "app.log", *(f"INFO plain text line {n}" for n in range(25)))
    result = run("report", "app.log")
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert errors[0].startswith("app.log:1: not a JSON object (Expecting value")
    assert errors[10:] == ["app.log: 15 more lines that are not JSON objects"]
    assert result.stdout == "no loopguard records\n"


def test_other_events_are_ignored(run: Run, tmp_path: Path) -> None:
    """JSON lines of other events (the application's own logs) are skipped silently."""
    write_log(
        tmp_path / "log.jsonl",
        {"event": "user created", "level": "info", "user_id": 3},
        {"message": "no event key"},
        record(),
    )
    result = run("report", "log.jsonl")
    assert result.stderr == "loopguard report: 1 record(s) at or above --fail-on=raise\n"
    assert result.stdout.startswith("1 loopguard record (1 raised) from 1 engine\n")


def test_newer_schema_is_reported_with_the_known_fields(run: Run, tmp_path: Path) -> None:
    """Records from a newer loopguard: one message per file naming the schema, then reported."""
    newer = SCHEMA_VERSION + 1
    write_log(
        tmp_path / "log.jsonl",
        record(schema=newer, new_field={"x": 1}, cause="some-new-cause"),
        record(schema=newer),
    )
    groups, result = report_json(run, "log.jsonl")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"log.jsonl:1: schema {newer}: written by a newer loopguard (this one reads schema "
        f"{SCHEMA_VERSION}); reporting the fields it knows"
    )
    assert len(result.stderr.splitlines()) == 2  # and the --fail-on line
    (group,) = groups
    assert group["count"] == 2
    assert group["causes"][0] == {"cause": "some-new-cause", "text": None, "fix": None}
    table = run("report", "log.jsonl").stdout
    assert "    cause:        some-new-cause: unknown cause; closed-loop-test: " in table


def test_record_without_key_fields_is_bad_input(run: Run, tmp_path: Path) -> None:
    """A loopguard record that lacks a grouping field or its action is skipped, exit 2."""
    incomplete = record(schema=SCHEMA_VERSION + 1)
    del incomplete["created_at"], incomplete["action"]
    write_log(tmp_path / "log.jsonl", incomplete, record(action="warned"))
    groups, result = report_json(run, "log.jsonl")
    assert result.returncode == 2
    assert "log.jsonl:1: loopguard record without created_at, action" in result.stderr
    assert [g["count"] for g in groups] == [1]


@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_empty_input(run: Run, tmp_path: Path, fmt: str) -> None:
    """An empty log is not an error: "no loopguard records" (json: ``[]`` on stdout), exit 0."""
    write_log(tmp_path / "empty.jsonl")
    result = run("report", "--format", fmt, "empty.jsonl", "-", stdin="")
    assert result.returncode == 0
    if fmt == "json":
        assert (result.stdout, result.stderr) == ("[]\n", "no loopguard records\n")
    else:
        assert (result.stdout, result.stderr) == ("no loopguard records\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["report"], "the following arguments are required: LOGFILE"),
        (["report", "--format", "xml", "x"], "argument --format: invalid choice: 'xml'"),
        (["report", "--fail-on", "error", "x"], "argument --fail-on: invalid choice: 'error'"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(run: Run, args: list[str], message: str) -> None:
    """Usage errors print argparse's usage and message and exit 2."""
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: loopguard")
    assert message in result.stderr


def test_closed_pipe_is_not_a_traceback(tmp_path: Path) -> None:
    """``loopguard report ... | head``: a reader that stops early gets no traceback on stderr."""
    lines = (record(created_at=f"src/db{n}.py:12") for n in range(3000))
    write_log(tmp_path / "log.jsonl", *lines)
    process = subprocess.Popen(
        [_console_script(), "report", "log.jsonl"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == "3000 loopguard records (3000 raised) from 3000 engines\n"
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=60) == 1
    assert "Traceback" not in stderr


def test_asyncpg_records_are_explained_as_pools_and_connections(run: Run, tmp_path: Path) -> None:
    """LG103 records (raw asyncpg) get the pool/connection wording of their cause and fix, not
    the SQLAlchemy engine's."""

    pool = record(
        code="LG103",
        resource="asyncpg Pool",
        pool_class="Pool",
        created_at="app.py:5",
        created_in="<module>",
        cause="closed-loop-run",
        operation="Pool.acquire",
    )
    connection = record(
        code="LG103",
        resource="asyncpg Connection",
        pool_class=None,
        created_at="app.py:9",
        created_in="main",
        cause="outside-loop",
        operation="Connection.fetchval",
    )
    write_log(tmp_path / "log.jsonl", pool, connection)
    groups, _ = report_json(run, "log.jsonl")
    assert [group["causes"] for group in groups] == [
        [
            {
                "cause": "closed-loop-run",
                "text": ASYNCPG_POOL["closed-loop-run"].text,
                "fix": ASYNCPG_POOL["closed-loop-run"].fix,
            }
        ],
        [
            {
                "cause": "outside-loop",
                "text": ASYNCPG_CONNECTION["outside-loop"].text,
                "fix": ASYNCPG_CONNECTION["outside-loop"].fix,
            }
        ],
    ]
    table = run("report", "log.jsonl").stdout
    assert "await engine.dispose()" not in table
    assert "create the pool inside each job" in table


# -- every code, from real runs ---------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """This run's environment without loopguard's and pytest's settings, plus ``extra``."""
    drop = ("LOOPGUARD", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


@pytest.fixture(scope="module")
def real_log(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log file written by loopguard itself: the docs' examples run against the real server,
    one after the other, all appending to one LOOPGUARD_LOG_FILE (every code, LG101 to LG106)."""
    workdir = tmp_path_factory.mktemp("examples")
    log = workdir / "loopguard.jsonl"
    for name in ("pytest.ini", *(a for _, args in EXAMPLE_RUNS for a in args if ".py" in a)):
        shutil.copy(EXAMPLES / name, workdir)
    env = _clean_env(DATABASE_URL=sqlalchemy_url(pg_dsn), LOOPGUARD_LOG_FILE=str(log))
    for loopguard_env, args in EXAMPLE_RUNS:
        subprocess.run(
            [sys.executable, *args],
            cwd=workdir,
            env={**env, **({"LOOPGUARD": loopguard_env} if loopguard_env else {})},
            capture_output=True,
            timeout=120,
        )
    return log


PYTEST = ("-m", "pytest", "-p", "no:cacheprovider", "-q")
# (LOOPGUARD, python's arguments) of each run, and what it logs.
EXAMPLE_RUNS = [
    ("", (*PYTEST, "lg101_cached_bug.py", "--loopguard")),  # LG106, LG101 x2
    ("", (*PYTEST, "lg101_session_bug.py", "--loopguard")),  # LG105, LG101 x2
    ("1", ("lg102_outside_loop_bug.py",)),  # LG102, then LG103 raised
    ("warn", ("lg103_global_pool_bug.py",)),  # LG103 warned
    ("1", ("lg104_dispose_bug.py",)),  # LG106, then LG104
    ("1", ("lg106_leak_bug.py",)),  # LG106
]


@needs_documented_stack
def test_every_code_gets_its_rows(run: Run, real_log: Path) -> None:
    """Every record of a real log is counted, whatever its event (LG101 to LG106): the groups'
    counts add up to the file's lines, each code's actions are its records' actions, and
    each group has its code's creation site, loops, cause and fix."""
    records = [json.loads(line) for line in real_log.read_text().splitlines()]
    groups, result = report_json(run, str(real_log))
    assert result.returncode == 1, result.stderr
    assert sum(g["count"] for g in groups) == len(records)
    logged = Counter((r["code"], r["action"]) for r in records)
    reported = Counter[tuple[str, str]]()
    for group in groups:
        reported.update({(group["code"], a): n for a, n in group["actions"].items()})
    assert reported == logged
    codes = [g["code"] for g in groups]
    assert codes == sorted(codes)  # grouped by code: LG101 first
    assert set(codes) == {"LG101", "LG102", "LG103", "LG104", "LG105", "LG106"}
    by_code = {(g["code"], g["created_at"]): g for g in groups}

    scopes = by_code["LG105", "lg101_session_bug.py:11"]
    assert scopes["created_in"] == "engine"  # the fixture
    assert scopes["url"] is None
    assert scopes["resource"] == "a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)"
    assert scopes["first_test"] == "lg101_session_bug.py::test_first (setup)"
    assert [(loop["fixture_loop_scope"], loop["test_loop_scope"]) for loop in scopes["loops"]] == [
        ("session", "function")
    ]
    assert scopes["causes"][0]["cause"] is None
    assert "another loop scope" in str(scopes["causes"][0]["text"])

    outside = by_code["LG102", "lg102_outside_loop_bug.py:11"]
    assert outside["actions"] == {"warned": 1}
    assert [list(loop) for loop in outside["loops"]] == [["pid", "owner_loop_id"]]
    assert outside["bound_during"] == []
    assert outside["causes"] == [
        {
            "cause": "outside-loop",
            "text": ASYNCPG_POOL["outside-loop"].text,
            "fix": ASYNCPG_POOL["outside-loop"].fix,
        }
    ]
    dispose = by_code["LG104", "lg104_dispose_bug.py:9"]
    assert dispose["actions"] == {"released": 1}
    assert [(loop["owner_loop_id"], loop["current_loop_id"]) for loop in dispose["loops"]] == [
        (1, 2)
    ]
    assert "disposed on an event loop other than" in str(dispose["causes"][0]["text"])
    leaks = by_code["LG106", "lg101_cached_bug.py:13"]
    assert leaks["actions"] == {"reported": 1}
    assert "loop closed while the engine's pool" in str(leaks["causes"][0]["text"])

    table = run("report", str(real_log)).stdout.splitlines()
    assert table[0].startswith(f"{len(records)} loopguard records (")
    assert "[7] LG105 lg101_session_bug.py:11 in engine" in table
    assert "    engine:       a pooled SQLAlchemy AsyncEngine (AsyncAdaptedQueuePool)" in table
    assert "    loops:        session loop scope->function" in table
    assert "    loops:        #1, captured at create_pool()" in table
    assert "    loops:        #1->#2" in table
    assert (
        "    docs:         `loopguard explain LG104`, or LG104 on the Error codes page of the docs"
    ) in table


# -- bad field types ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_field_of_the_wrong_type_is_a_bad_line(run: Run, tmp_path: Path, fmt: str) -> None:
    """A list or an object where a string or a number belongs: the line is reported with its
    number and skipped, the other records are reported, exit 2; never a traceback."""
    write_log(
        tmp_path / "log.jsonl",
        used_by("test_a", 2),
        record(pid=[7641]),
        record(created_at={"file": "db.py", "line": 12}, used_during=["t"]),
        record(action=None, owner_loop_id=True),
        lg106(code=["LG106"]),
        used_by("test_b", 3),
    )
    result = run("report", "--format", fmt, "log.jsonl")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "log.jsonl:2: loopguard record with bad fields: pid is a list (expected an integer or "
        "null)",
        "log.jsonl:3: loopguard record with bad fields: created_at is an object (expected a "
        "string or null); used_during is a list (expected a string or null)",
        "log.jsonl:4: loopguard record with bad fields: owner_loop_id is a boolean (expected an "
        "integer or null); action is null (expected a string)",
        "log.jsonl:5: loopguard record with bad fields: code is a list (expected a string or null)",
        "loopguard report: 2 record(s) at or above --fail-on=raise",
    ]
    if fmt == "json":
        assert [g["count"] for g in json.loads(result.stdout)] == [2]
    else:
        assert result.stdout.startswith("2 loopguard records (2 raised) from 1 engine\n")


def test_missing_and_bad_fields_together(run: Run, tmp_path: Path) -> None:
    """One line, one message: what is missing, then what is of the wrong type."""
    incomplete = record(url=42)
    del incomplete["action"]
    write_log(tmp_path / "log.jsonl", incomplete)
    result = run("report", "log.jsonl")
    assert result.returncode == 2
    assert result.stderr == (
        "log.jsonl:1: loopguard record without action, and with bad fields: url is a number "
        "(expected a string or null)\n"
    )


# -- one engine, many records --------------------------------------------------------------------


def _one_engine(path: Path, records: int, distinct: bool = True) -> Path:
    """A log of one engine used by ``records`` tests, each on its own loop (``distinct``), or
    the same record over and over."""
    lines = (
        used_by(f"test_{n}" if distinct else "test_x", n + 2 if distinct else 2)
        for n in range(records)
    )
    return write_log(path, *lines)


def _report_cpu_seconds(path: Path) -> float:
    """CPU time of one ``loopguard report`` of ``path``, in this process: a subprocess would
    add its start-up, and wall time the other processes of a busy machine."""
    from loopguard import _cli

    start = time.process_time()
    assert _cli.main(["report", "--fail-on", "never", str(path)]) == 0
    return time.process_time() - start


def test_time_grows_linearly_with_the_records_of_one_engine(tmp_path: Path) -> None:
    """One engine used by 2,000 tests, then 20,000: ten times the records take about ten times
    the time (quadratic: a hundred times), compared in CPU time with a generous bound, the
    smaller run's best of three against the larger's best of up to three tries."""
    small = _one_engine(tmp_path / "small.jsonl", 2_000)
    large = _one_engine(tmp_path / "large.jsonl", 20_000)
    small_seconds = min(_report_cpu_seconds(small) for _ in range(3))
    ratios = []
    for _ in range(3):
        ratios.append(_report_cpu_seconds(large) / small_seconds)
        if ratios[-1] < 25:
            break
    assert min(ratios) < 25, f"20,000 records took {ratios} times as long as 2,000"


def test_memory_grows_with_distinct_values_not_records(tmp_path: Path) -> None:
    """The same record 1,000 or 10,000 times: the report reads one line at a time and keeps
    each repeated value once, so its peak memory does not grow with the file (keeping the
    records would take more than the file's size)."""
    from loopguard import _cli

    peaks, sizes = [], []
    for records in (1_000, 10_000):
        path = _one_engine(tmp_path / f"{records}.jsonl", records, distinct=False)
        sizes.append(path.stat().st_size)
        tracemalloc.start()
        try:
            assert _cli.main(["report", "--format", "json", "--fail-on", "never", str(path)]) == 0
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[1] < 3 * peaks[0], (peaks, sizes)
    assert peaks[1] < sizes[1] / 20, (peaks, sizes)


# -- the command itself: --version, help, loopguard run's errors --------------------------------


def test_version(run: Run) -> None:
    """``loopguard --version`` prints the installed distribution's version."""
    result = run("--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"loopguard {importlib.metadata.version('asyncio-loopguard')}\n"
    assert result.stdout == f"loopguard {loopguard.__version__}\n"


@pytest.mark.parametrize(
    "args", [["--help"], ["report", "--help"], ["run", "--help"], ["explain", "--help"]]
)
def test_help_is_plain_text(run: Run, args: list[str]) -> None:
    """Help texts read well in a terminal: no reST markup (``code``, :role:`name`)."""
    result = run(*args)
    assert result.returncode == 0
    assert "``" not in result.stdout
    assert not re.search(r":\w+:`", result.stdout)


def test_report_help_says_what_dash_means(run: Run) -> None:
    result = run("report", "--help")
    assert '"-" reads standard input' in " ".join(result.stdout.split())


def test_report_help_says_the_action_of_every_code(run: Run) -> None:
    """The actions paragraph names every code of the table, the raising ones as raised."""
    text = " ".join(run("report", "--help").stdout.split())
    actions = text.split("actions: ", 1)[1].split(" --fail-on raise", 1)[0]
    assert sorted(re.findall(r"LG\d+", actions)) == sorted(CODES)
    raised = actions.split(" in raise mode", 1)[0]
    assert sorted(re.findall(r"LG\d+", raised)) == sorted(c for c in CODES if CODES[c].raises)


def test_run_help_describes_the_command(run: Run) -> None:
    text = " ".join(run("run", "--help").stdout.split())
    assert "Run a program with loopguard active, without changing its code." in text
    assert "Scripts (app.py) and modules (-m pkg) run in this process" in text
    assert "exit status: the program's own" in text


# loopguard run installs loopguard (SQLAlchemy's and asyncpg's imports): the installed command
# only, the way users run it.
console_script_only = pytest.mark.parametrize("run", ["console script"], indirect=True)


@console_script_only
@pytest.mark.parametrize(
    ("target", "message"),
    [
        (["missing.py"], "cannot run 'missing.py': No such file or directory"),
        (["-m", "missing_module"], "cannot run -m missing_module: No module named missing_module"),
        (["-m", "pkg"], "cannot run -m pkg: No module named pkg.__main__; 'pkg' is a package"),
    ],
)
def test_run_target_not_found_is_one_line(
    run: Run, tmp_path: Path, target: list[str], message: str
) -> None:
    """A script or module that does not exist: one line naming it, exit status 2."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").touch()
    result = run("run", "--", *target)
    assert result.returncode == 2
    assert result.stderr.startswith(f"loopguard run: {message}")
    assert len(result.stderr.splitlines()) == 1


PROGRAM_ERRORS = {
    # What a program raises itself keeps its traceback, even when it is the same exception
    # type as "not found".
    "value_error.py": "def main():\n    raise ValueError('boom')\n\n\nmain()\n",
    "file_not_found.py": "open('no-such-file.txt')\n",
    "import_error.py": "import no_such_dependency  # noqa\n",
    "syntax_error.py": "def (\n",
}


@console_script_only
@pytest.mark.parametrize("how", ["script", "module"])
@pytest.mark.parametrize("name", sorted(PROGRAM_ERRORS))
def test_run_program_error_is_reported_as_python_would(
    run: Run, tmp_path: Path, name: str, how: str
) -> None:
    """A script (or -m module) that raises: its own traceback, from its own first frame, as
    ``python app.py`` prints it, and exit status 1."""
    (tmp_path / name).write_text(PROGRAM_ERRORS[name])
    target = [name] if how == "script" else ["-m", name[:-3]]
    result = run("run", "--", *target)
    python = subprocess.run(
        [sys.executable, name], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, python.returncode) == (1, 1)
    # python names the script by its absolute path; runpy by the path it was given.
    assert result.stderr.replace(str(tmp_path / name), name) == python.stderr.replace(
        str(tmp_path / name), name
    )
