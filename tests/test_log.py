"""loopguard's log sinks: the JSON-lines file keeps complete lines, even with several processes
appending; and a sink that fails (a full disk, a structlog processor that raises) is said once
on stderr and never replaces loopguard's error, a healed query or a loop's close."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from test_autoload import _run
from test_pytest_plugin import line_of

from loopguard._log import SCHEMA_VERSION, JsonLinesSink, app_log

RECORDS_PER_PROCESS = 300
PROCESSES = 4


def _write_records(path: str, worker: int) -> None:
    sink = JsonLinesSink(path)
    try:
        for index in range(RECORDS_PER_PROCESS):
            # Long enough that a torn write would show up as a broken line.
            sink.emit(
                "error", "loopguard.loop_mismatch", {"worker": worker, "i": index, "pad": "x" * 900}
            )
    finally:
        sink.close()


def test_several_processes_append_whole_lines(tmp_path: Path) -> None:
    """4 processes x 300 records of ~1 KiB into one file: every line is one intact record."""
    path = str(tmp_path / "shared.jsonl")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_records, args=(path, n)) for n in range(PROCESSES)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert len(lines) == PROCESSES * RECORDS_PER_PROCESS
    records = [json.loads(line) for line in lines]
    seen = {(r["worker"], r["i"]) for r in records}
    assert len(seen) == PROCESSES * RECORDS_PER_PROCESS
    first = records[0]
    assert first["event"] == "loopguard.loop_mismatch"
    assert first["level"] == "error"
    assert first["schema"] == SCHEMA_VERSION
    assert {"timestamp", "pid"} <= set(first)


def test_sink_repr_and_close_are_safe(tmp_path: Path) -> None:
    """repr names the file; close() twice is harmless and later records are dropped, not raised."""
    sink = JsonLinesSink(str(tmp_path / "x.jsonl"))
    assert repr(sink) == f"<JsonLinesSink {str(tmp_path / 'x.jsonl')!r}>"
    sink.close()
    sink.close()
    sink.emit("warning", "loopguard.loop_mismatch", {"a": 1})
    assert (tmp_path / "x.jsonl").read_text() == ""


@pytest.fixture
def structlog_config() -> Iterator[None]:
    """The test may configure structlog; its configuration is put back afterwards."""
    configured, config = structlog.is_configured(), structlog.get_config()
    yield
    if configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()


def test_records_go_to_stderr_until_the_application_configures_structlog(
    structlog_config: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unconfigured: the record is on stderr, rendered as structlog's default would, stdout
    stays empty and structlog stays unconfigured.  Once the application configures structlog
    the next record follows its configuration, and stderr gets nothing."""
    structlog.reset_defaults()
    app_log("error", "loopguard.loop_mismatch", code="LG101", created_at="app.py:7")
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert "[error    ] loopguard.loop_mismatch        code=LG101 created_at=app.py:7" in line
    assert not structlog.is_configured()

    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[captured])
    app_log("warning", "loopguard.loop_closed_with_connections", code="LG106")
    assert captured.entries == [
        {"event": "loopguard.loop_closed_with_connections", "code": "LG106", "log_level": "warning"}
    ]
    assert capsys.readouterr() == ("", "")


def test_the_application_log_level_does_not_filter_the_file(
    tmp_path: Path, structlog_config: None
) -> None:
    """An application that configures structlog to drop everything below CRITICAL still gets
    every record in loopguard's file: the file's logger takes nothing from that config."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    sink = JsonLinesSink(str(tmp_path / "x.jsonl"))
    try:
        sink.emit("warning", "loopguard.loop_mismatch", {"a": 1})
    finally:
        sink.close()
    [record] = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert (record["event"], record["level"], record["a"]) == (
        "loopguard.loop_mismatch",
        "warning",
        1,
    )


def test_a_failing_file_is_reported_once_and_never_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every write fails (ENOSPC): emit() returns, and stderr gets one line naming the file
    and the error, however many records are dropped."""
    full = tmp_path / "full.jsonl"
    full.symlink_to("/dev/full")  # a path of this test's own: the report is once per process
    sink = JsonLinesSink(str(full))
    try:
        for _ in range(3):
            sink.emit("error", "loopguard.loop_mismatch", {"a": 1})
    finally:
        sink.close()
    assert capsys.readouterr().err.splitlines() == [
        f"loopguard: the log file '{full}' failed (OSError: [Errno 28] No space left on "
        "device); records it cannot take are dropped (said once per process)."
    ]


# -- a program whose sinks fail: real loops, real PostgreSQL, its own process --------------

# One asyncio.run() per job on a module-level engine: job 1's loop closes while the pool
# holds its connection (LG106), job 2 uses the engine on a new loop (LG101).
FAILING_SINKS_APP = textwrap.dedent(
    """\
    import asyncio
    import os

    import loopguard
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    if os.environ.get("FAILING_PROCESSOR"):
        import structlog

        failure = {"ValueError": ValueError, "KeyboardInterrupt": KeyboardInterrupt}

        def failing_processor(logger, method_name, event_dict):
            raise failure[os.environ["FAILING_PROCESSOR"]]("this processor fails on purpose")

        structlog.configure(processors=[failing_processor])

    loopguard.install(os.environ["MODE"], log_file=os.environ["LOG_FILE"])
    engine = create_async_engine(os.environ["DATABASE_URL"])
    loops = []


    async def job():
        loops.append(asyncio.get_running_loop())
        async with engine.connect() as conn:
            return (await conn.execute(text("select 1"))).scalar()


    for number in (1, 2):
        try:
            result = asyncio.run(job())
        except loopguard.LoopMismatchError as exc:
            record = exc.record
            result = f"LoopMismatchError {record['code']} created at {record['created_at']}"
        except BaseException as exc:
            result = type(exc).__name__
        print(f"job {number}: {result}")
        print(f"loop {number} closed: {loops[-1].is_closed()}")
    """
)
ENGINE_LINE = line_of(FAILING_SINKS_APP, "engine = create_async_engine(")
FULL_FILE_LINE = (
    "loopguard: the log file '/dev/full' failed (OSError: [Errno 28] No space left on device); "
    "records it cannot take are dropped (said once per process)."
)
PROCESSOR_LINE = (
    "loopguard: the structlog logger 'loopguard' failed (ValueError: this processor fails on "
    "purpose); records it cannot take are dropped (said once per process)."
)


def _run_app(tmp_path: Path, pg_dsn: str, **env: str) -> tuple[list[str], list[str], str]:
    """Run the app: what its jobs printed, loopguard's one-line reports on stderr, all of
    stderr."""
    script = tmp_path / "app.py"
    script.write_text(FAILING_SINKS_APP)
    result = _run([sys.executable, str(script)], tmp_path, pg_dsn, **env)
    output = [line for line in result.stdout.splitlines() if line.startswith(("job ", "loop "))]
    reports = [line for line in result.stderr.splitlines() if line.startswith("loopguard: ")]
    return output, reports, result.stderr


def _assert_no_fallout(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


@pytest.mark.parametrize(
    ("mode", "job2"),
    [("raise", f"LoopMismatchError LG101 created at app.py:{ENGINE_LINE}"), ("warn", "1")],
)
def test_full_log_file_changes_nothing_but_one_line_on_stderr(
    tmp_path: Path, pg_dsn: str, mode: str, job2: str
) -> None:
    """LOOPGUARD_LOG_FILE=/dev/full: job 1's loop closes (LG106 reported, not OSError raised
    from asyncio.run()); job 2 raises LoopMismatchError with its record (raise) or is healed
    and runs its query (warn); stderr has one line for the file and no traceback."""
    output, reports, stderr = _run_app(tmp_path, pg_dsn, MODE=mode, LOG_FILE="/dev/full")
    assert output == ["job 1: 1", "loop 1 closed: True", f"job 2: {job2}", "loop 2 closed: True"]
    assert reports == [FULL_FILE_LINE]
    _assert_no_fallout(stderr)


@pytest.mark.parametrize("mode", ["raise", "warn"])
def test_failing_structlog_processor_leaves_the_file_its_records(
    tmp_path: Path, pg_dsn: str, mode: str
) -> None:
    """The application's structlog processor raises: loopguard behaves as without it, the log
    file still gets every record, and stderr has one line naming structlog's logger."""
    log_file = tmp_path / "lg.jsonl"
    output, reports, stderr = _run_app(
        tmp_path, pg_dsn, MODE=mode, LOG_FILE=str(log_file), FAILING_PROCESSOR="ValueError"
    )
    job2 = f"LoopMismatchError LG101 created at app.py:{ENGINE_LINE}" if mode == "raise" else "1"
    assert output == ["job 1: 1", "loop 1 closed: True", f"job 2: {job2}", "loop 2 closed: True"]
    assert reports == [PROCESSOR_LINE]
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    codes = ["LG106", "LG101"] + (["LG106"] if mode == "warn" else [])  # healed: pool holds it
    assert [r["code"] for r in records] == codes
    _assert_no_fallout(stderr)


def test_two_failing_sinks_one_line_each(tmp_path: Path, pg_dsn: str) -> None:
    """Both sinks fail: each is contained on its own and said once."""
    output, reports, stderr = _run_app(
        tmp_path, pg_dsn, MODE="raise", LOG_FILE="/dev/full", FAILING_PROCESSOR="ValueError"
    )
    assert output[2] == f"job 2: LoopMismatchError LG101 created at app.py:{ENGINE_LINE}"
    assert reports == [PROCESSOR_LINE, FULL_FILE_LINE]
    _assert_no_fallout(stderr)


def test_keyboard_interrupt_in_a_sink_is_not_swallowed_and_the_loop_still_closes(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Only Exceptions are contained: a KeyboardInterrupt raised while LG106 is being logged
    reaches the program, after the loop has closed."""
    output, reports, _ = _run_app(
        tmp_path, pg_dsn, MODE="raise", LOG_FILE=os.devnull, FAILING_PROCESSOR="KeyboardInterrupt"
    )
    assert output[:2] == ["job 1: KeyboardInterrupt", "loop 1 closed: True"]
    assert reports == []
