"""pytest-xdist: every worker guards, records name their worker, the controller summarises.

A generated suite with the cached-engine pattern (scenario 1) in two test files runs with
``-n 2 --dist loadfile``, so each worker gets one file, binds its own copy of the engine on its
first test's loop and hits the mismatch in the next two.  Real PostgreSQL, real xdist workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_pytest_plugin as plugin_tests
from test_pytest_plugin import (
    CACHED_DB_LINE,
    CACHED_DB_PY,
    FULL_FILE_LINE,
    RunPytest,
    ini,
    output,
    write,
)

pytest.importorskip("xdist")

# The plugin tests' fixtures, the autouse one that cleans the environment included.
_clean_environment = plugin_tests._clean_environment
db_url = plugin_tests.db_url
run = plugin_tests.run

USERS_TESTS_PY = """
    from sqlalchemy import text
    from src.configs.db import SessionLocal


    async def test_create_{name}():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 1"))).scalar() == 1


    async def test_list_{name}():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 2"))).scalar() == 2


    async def test_delete_{name}():
        async with SessionLocal() as session:
            assert (await session.execute(text("select 3"))).scalar() == 3
"""
SITE = f"src/configs/db.py:{CACHED_DB_LINE}"
MISUSED = [
    "tests/test_users.py::test_list_users",
    "tests/test_users.py::test_delete_users",
    "tests/test_orders.py::test_list_orders",
    "tests/test_orders.py::test_delete_orders",
]


@pytest.fixture
def two_file_suite(pytester: pytest.Pytester, db_url: str) -> Path:
    write(
        pytester.path,
        {
            "pytest.ini": ini(),
            "src/__init__.py": "",
            "src/configs/__init__.py": "",
            "src/configs/db.py": CACHED_DB_PY,
            "tests/test_users.py": USERS_TESTS_PY.format(name="users"),
            "tests/test_orders.py": USERS_TESTS_PY.format(name="orders"),
        },
    )
    return pytester.path


def _records(log_file: Path) -> list[dict[str, object]]:
    # json.loads of every line: a line torn by two workers writing at once would not parse.
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def test_every_worker_guards_and_the_controller_summarises_all_of_them(
    two_file_suite: Path, run: RunPytest
) -> None:
    """-n 2, raise mode: the four misuses fail with LoopMismatchError on both workers; the
    JSON log holds all four records intact, each naming its worker; the controller's
    summary counts all four and lists every test, whichever worker ran it."""
    log_file = two_file_suite / "lg.jsonl"
    result = run(
        "-n", "2", "--dist", "loadfile", "--loopguard", "--tb=short",
        env={"LOOPGUARD_LOG_FILE": str(log_file)},
    )  # fmt: skip
    result.assert_outcomes(passed=2, failed=4)
    result.stdout.fnmatch_lines(
        [
            "loopguard: mode=raise (from the --loopguard option), guarding *",
            "*= loopguard =*",
            "4 event-loop mismatches from 1 engine:",
            f"  LG101 {SITE} in get_async_engine  *",
            "    4 × raised; first bound during tests/test_*.py::test_create_* (call)",
            "    used on another loop by 4 test(s):",
        ]
    )
    for test in MISUSED:
        result.stdout.fnmatch_lines([f"      {test}"])
        result.stdout.fnmatch_lines([f"FAILED {test} - loopguard.LoopMismatchError*"])

    records = [r for r in _records(log_file) if r["event"] == "loopguard.loop_mismatch"]
    assert sorted(str(r["used_during"]) for r in records) == sorted(f"{t} (call)" for t in MISUSED)
    workers = {r["worker"] for r in records}
    assert workers == {"gw0", "gw1"}
    for record in records:
        assert record["code"] == "LG101"
        assert record["action"] == "raised"
        assert record["created_at"] == SITE
        # Both misuses of a file happened on the worker that ran the file.
        same_file = [r for r in records if str(r["used_during"]).split("::")[0] ==
                     str(record["used_during"]).split("::")[0]]  # fmt: skip
        assert {r["worker"] for r in same_file} == {record["worker"]}
        assert {r["pid"] for r in same_file} == {record["pid"]}
    assert len({r["pid"] for r in records}) == 2


def test_install_in_conftest_under_xdist_summarises_every_worker(
    two_file_suite: Path, run: RunPytest
) -> None:
    """loopguard.install() in conftest.py instead of --loopguard: the controller and every
    worker import it; the header names it and the controller summarises both workers."""
    write(two_file_suite, {"conftest.py": plugin_tests.INSTALL_CONFTEST_PY})
    result = run("-n", "2", "--dist", "loadfile", "--tb=no")
    result.assert_outcomes(passed=2, failed=4)
    result.stdout.fnmatch_lines(
        [
            f"loopguard: mode=raise (from {plugin_tests.INSTALL_SOURCE}), guarding *",
            "*= loopguard =*",
            "4 event-loop mismatches from 1 engine:",
            "    used on another loop by 4 test(s):",
        ]
    )


def test_warn_mode_under_xdist_heals_on_every_worker(two_file_suite: Path, run: RunPytest) -> None:
    """-n 2, warn mode: every test passes; the summary on the controller counts four warned."""
    result = run("-n", "2", "--dist", "loadfile", "--loopguard-mode=warn")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(
        [
            "*= loopguard =*",
            "4 event-loop mismatches from 1 engine:",
            "    4 × warned; first bound during *",
        ]
    )


def test_a_log_file_failing_on_the_workers_is_named_in_the_controller_summary(
    two_file_suite: Path, run: RunPytest
) -> None:
    """-n 2, warn mode, LOOPGUARD_LOG_FILE=/dev/full: every test passes, and the controller's
    summary says once that the file failed, though only the workers wrote to it."""
    result = run(
        "-n", "2", "--dist", "loadfile", "--loopguard-mode=warn",
        env={"LOOPGUARD_LOG_FILE": "/dev/full"},
    )  # fmt: skip
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*= loopguard =*", "    4 × warned; *", FULL_FILE_LINE])
    assert output(result).count(FULL_FILE_LINE) == 1


def test_without_xdist_workers_records_have_no_worker_field(
    two_file_suite: Path, run: RunPytest
) -> None:
    """The same suite in one process (``-p no:xdist``): one engine for both files, so only
    the very first test passes; the records are exactly as before, without a ``worker``."""
    log_file = two_file_suite / "lg.jsonl"
    result = run("-p", "no:xdist", "--loopguard", env={"LOOPGUARD_LOG_FILE": str(log_file)})
    result.assert_outcomes(passed=1, failed=5)
    result.stdout.fnmatch_lines(["5 event-loop mismatches from 1 engine:"])
    records = _records(log_file)
    assert len([r for r in records if r["event"] == "loopguard.loop_mismatch"]) == 5
    assert all("worker" not in record for record in records)
