"""_loops.current_loop(): the loop check every guard makes, with real event loops."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any, Optional

import pytest

from loopguard import _loops

uvloop: Any
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


def _in_loop(loop: asyncio.AbstractEventLoop, expected: Any) -> Optional[Any]:
    async def ask() -> Optional[Any]:
        return _loops.current_loop(expected)

    return loop.run_until_complete(ask())


@pytest.fixture
def two_loops() -> Any:
    loops = (asyncio.new_event_loop(), asyncio.new_event_loop())
    yield loops
    for loop in loops:
        loop.close()


def test_the_expected_loop_running_is_the_answer(two_loops: Any) -> None:
    loop_a, _ = two_loops
    assert _in_loop(loop_a, loop_a) is loop_a
    # It stopped: the shortcut no longer applies, and no loop runs.
    assert _loops.current_loop(loop_a) is None


def test_another_running_loop_is_the_answer(two_loops: Any) -> None:
    loop_a, loop_b = two_loops
    assert _in_loop(loop_b, loop_a) is loop_b


def test_no_running_loop_is_none(two_loops: Any) -> None:
    loop_a, _ = two_loops
    assert _loops.current_loop(loop_a) is None
    assert _loops.current_loop(None) is None


def test_a_loop_running_in_another_thread_is_not_taken_for_the_running_one(
    two_loops: Any,
) -> None:
    """The shortcut compares threads: loop A running elsewhere says nothing about this one."""
    loop_a, loop_b = two_loops
    started, release = threading.Event(), threading.Event()

    async def hold() -> None:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=loop_a.run_until_complete, args=(hold(),))
    thread.start()
    try:
        assert started.wait(10)
        assert _loops.current_loop(loop_a) is None  # no loop runs in this thread
        assert _in_loop(loop_b, loop_a) is loop_b
    finally:
        release.set()
        thread.join(10)


@pytest.mark.skipif(uvloop is None, reason="uvloop not installed")
def test_uvloop_loops_take_the_lookup_path() -> None:
    """uvloop's loops do not expose the thread they run in; the answer is the same."""
    loop_a: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    loop_b: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    try:
        assert _in_loop(loop_a, loop_a) is loop_a
        assert _in_loop(loop_b, loop_a) is loop_b
    finally:
        loop_a.close()
        loop_b.close()


@pytest.mark.skipif(
    sys.version_info >= (3, 12) or not sys.platform.startswith("linux"),
    reason="asyncio._get_running_loop() calls getpid() only before 3.12; strace on Linux",
)
def test_the_check_for_the_running_loop_makes_no_system_call(tmp_path: Any) -> None:
    """On Python < 3.12 asyncio._get_running_loop() is a getpid() system call; the common
    case (the expected loop is the one running) is answered without one."""
    import shutil
    import subprocess

    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    code = (
        "import asyncio\n"
        "from loopguard import _loops\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    for _ in range(1000):\n"
        "        assert _loops.current_loop(loop) is loop\n"
        "asyncio.run(main())\n"
    )
    counts = tmp_path / "counts.txt"
    subprocess.run(
        [strace, "-f", "-c", "-e", "trace=getpid", "-o", str(counts), sys.executable, "-c", code],
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")},
        timeout=60,
    )
    calls = [line.split() for line in counts.read_text().splitlines() if "getpid" in line]
    # asyncio.run() itself asks a few times; a check per iteration would be 1,000 more.
    assert not calls or int(calls[0][3]) < 100, counts.read_text()


def test_a_name_given_as_a_function_is_made_once_when_a_message_asks() -> None:
    """name_numbered_loop() takes a function for the name (the pytest plugin names a loop per
    test): called at the first message that mentions the loop, once; one that fails leaves
    the loop without a name instead of failing the message."""
    calls: list[str] = []

    def make() -> str:
        calls.append("made")
        return "a test's loop"

    def fail() -> str:
        raise RuntimeError("no name")

    named, unnamed = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        number = _loops.loop_id(named)
        _loops.name_numbered_loop(number, make, "pytest-asyncio")
        assert calls == []
        assert _loops.loop_name(number) == " (a test's loop)"
        assert _loops.loop_name(number) == " (a test's loop)"
        assert calls == ["made"]
        assert _loops.loop_kind(number) == "pytest-asyncio"
        _loops.name_numbered_loop(_loops.loop_id(unnamed), fail)
        assert _loops.loop_name(_loops.loop_id(unnamed)) == ""
    finally:
        named.close()
        unnamed.close()
