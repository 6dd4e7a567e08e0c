"""httpx and aiohttp clients in real pytest runs: the summary and ``loopguard report`` group
the records by client, as they do by engine.

Each test writes a suite whose tests share a cached client while pytest-asyncio gives each
test a new loop, and runs it with ``pytester.runpytest_subprocess`` against the ``http_url``
server, with loopguard activated by the environment (``LOOPGUARD=1``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from teststack import PYTEST_ASYNCIO

from loopguard._resource_causes import AIOHTTP_SESSION, HTTPX_CLIENT


def _ini() -> str:
    lines = ["[pytest]"]
    if PYTEST_ASYNCIO >= (0, 24):
        lines.append("asyncio_default_fixture_loop_scope = function")
    return "\n".join(lines) + "\n"


HTTPX_SUITE = """
    import os

    import httpx
    import pytest

    client = httpx.AsyncClient(base_url=os.environ["HTTP_URL"])


    @pytest.mark.asyncio
    async def test_one():
        assert (await client.get("/")).text == "ok"


    @pytest.mark.asyncio
    async def test_two():
        assert (await client.get("/")).text == "ok"


    @pytest.mark.asyncio
    async def test_three():
        assert (await client.get("/")).text == "ok"
"""

AIOHTTP_SUITE = """
    import os

    import aiohttp
    import pytest

    _session = None


    def get_session():
        global _session
        if _session is None:
            _session = aiohttp.ClientSession(os.environ["HTTP_URL"])
        return _session


    async def get(path):
        async with get_session().get(path) as response:
            return await response.text()


    @pytest.mark.asyncio
    async def test_one():
        assert await get("/") == "ok"


    @pytest.mark.asyncio
    async def test_two():
        assert await get("/") == "ok"


    @pytest.mark.asyncio
    async def test_three():
        assert await get("/") == "ok"
"""

CASES = {
    "httpx": (HTTPX_SUITE, "LG108", "client", "test_clients.py:6 in <module>"),
    "aiohttp": (AIOHTTP_SUITE, "LG109", "session", "test_clients.py:12 in get_session"),
}


@pytest.mark.parametrize("library", sorted(CASES))
def test_summary_and_report_group_the_records_by_client(
    library: str,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    http_url: str,
    tmp_path: Path,
) -> None:
    suite, code, noun, created = CASES[library]
    pytester.makefile(".ini", pytest=_ini())
    pytester.makepyfile(test_clients=textwrap.dedent(suite).lstrip("\n"))
    log = tmp_path / "loopguard.jsonl"
    for name in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS", "LOOPGUARD_LOG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_URL", http_url)
    monkeypatch.setenv("LOOPGUARD", "1")
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(log))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*loopguard.LoopMismatchError: * used on event loop #2*",
            "*= loopguard =*",
            f"2 event-loop mismatches from 1 {noun}:",
            f"  {code} {created}  [{http_url}]",
            "    2 × raised; first bound during test_clients.py::test_one (call)",
            "    used on another loop by 2 test(s):",
            "      test_clients.py::test_two",
            "      test_clients.py::test_three",
        ]
    )
    assert "Event loop is closed" not in result.stdout.str()
    report = subprocess.run(
        [sys.executable, "-m", "loopguard", "report", "--format", "json", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [group] = json.loads(report.stdout)
    assert (group["code"], f"{group['created_at']} in {group['created_in']}") == (code, created)
    assert (group["url"], group["count"], group["actions"]) == (http_url, 2, {"raised": 2})
    assert group["first_test"] == "test_clients.py::test_two (call)"
    causes = HTTPX_CLIENT if library == "httpx" else AIOHTTP_SESSION
    cause = causes["closed-loop-test"]
    assert group["causes"] == [{"cause": "closed-loop-test", "text": cause.text, "fix": cause.fix}]
