"""asyncio's own primitives (LG111): a Lock, Event, Condition, Semaphore, Queue or Barrier used
on an event loop other than the one asyncio bound it to.

Real event loops throughout (``asyncio.run``, ``new_event_loop``, a loop in another thread),
nothing mocked.  Python 3.10+ binds a primitive the first time it has to wait; Python 3.9 when
it is created, to ``asyncio.get_event_loop()``'s loop: tests that depend on it say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import structlog
from guard_helpers import (
    XDIST_FIELDS,
    current_test_id,
    display_path,
    marker_line,
    silence_checked,
    written,
)
from test_pytest_plugin import ini, line_of, output, write
from teststack import PYTEST_ASYNCIO

import loopguard
from loopguard._causes import causes_for
from loopguard._codes import CODES
from loopguard.integrations import _primitive_facts, _primitives

LEGACY = sys.version_info < (3, 10)
HERE = display_path(__file__)
bound_on_first_wait = pytest.mark.skipif(
    LEGACY, reason="Python 3.9 binds a primitive when it is created"
)
bound_at_creation = pytest.mark.skipif(
    not LEGACY, reason="Python 3.10+ binds a primitive on its first wait"
)

# kind -> (class, arguments, resource in the records, the asyncio method that waits)
KINDS: dict[str, tuple[Any, tuple[int, ...], str, str]] = {
    "Lock": (asyncio.Lock, (), "asyncio.Lock", "Lock.acquire"),
    "Event": (asyncio.Event, (), "asyncio.Event", "Event.wait"),
    "Condition": (asyncio.Condition, (), "asyncio.Condition", "Condition.wait"),
    "Semaphore": (asyncio.Semaphore, (1,), "asyncio.Semaphore", "Semaphore.acquire"),
    "BoundedSemaphore": (
        asyncio.BoundedSemaphore,
        (1,),
        "asyncio.BoundedSemaphore",
        "Semaphore.acquire",
    ),
    "Queue": (asyncio.Queue, (), "asyncio.Queue", "Queue.get"),
    "PriorityQueue": (asyncio.PriorityQueue, (), "asyncio.PriorityQueue", "Queue.get"),
    "LifoQueue": (asyncio.LifoQueue, (), "asyncio.LifoQueue", "Queue.get"),
}
if hasattr(asyncio, "Barrier"):  # 3.11+: a Barrier waits on its own Condition
    KINDS["Barrier"] = (asyncio.Barrier, (2,), "asyncio.Barrier", "Condition.wait")


async def join_once(queue: asyncio.Queue[int]) -> None:
    """Put an item, let a task take it, and wait on ``queue.join()`` (the Queue's own Event)."""
    queue.put_nowait(1)

    async def consume() -> None:
        await queue.get()
        queue.task_done()

    task = asyncio.ensure_future(consume())
    await queue.join()  # join: Queue
    await task


def join_on_another_loop(queue: asyncio.Queue[int]) -> loopguard.LoopMismatchError:
    """Bind ``queue`` with a join on one loop (3.10+; 3.9 binds at creation), join it on a new
    one: the LoopMismatchError, reported as the Queue waiting on its own Event."""
    if not LEGACY:
        asyncio.run(join_once(queue))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(join_once(queue))
    error = excinfo.value
    assert (error.resource, error.record["operation"]) == ("asyncio.Queue", "Event.wait")
    return error


async def wait_once(primitive: Any) -> None:
    """Make ``primitive`` wait once on the running loop (Python 3.10+ binds it then)."""
    if isinstance(primitive, asyncio.Condition):

        async def waiter() -> None:
            async with primitive:
                await primitive.wait()  # wait: Condition

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        async with primitive:
            primitive.notify_all()
        await task
    elif isinstance(primitive, asyncio.Event):

        async def event_waiter() -> None:
            await primitive.wait()  # wait: Event

        task = asyncio.ensure_future(event_waiter())
        await asyncio.sleep(0)
        primitive.set()
        await task
        primitive.clear()
    elif isinstance(primitive, asyncio.Queue):

        async def getter() -> Any:
            return await primitive.get()  # wait: Queue

        task = asyncio.ensure_future(getter())
        await asyncio.sleep(0)
        primitive.put_nowait(1)
        await task
    elif type(primitive).__name__ == "Barrier":

        async def party() -> None:
            await primitive.wait()  # wait: Barrier

        await asyncio.gather(party(), party())
    else:  # Lock, Semaphore(1), BoundedSemaphore(1): the second holder waits

        async def hold() -> None:
            async with primitive:  # wait: Lock
                await asyncio.sleep(0)

        await asyncio.gather(hold(), hold())


def wait_line(kind: str) -> int:
    """The line of this file where ``wait_once`` makes a primitive of ``kind`` wait."""
    marker = {"Semaphore": "Lock", "BoundedSemaphore": "Lock"}.get(kind, kind)
    if "Queue" in kind:
        marker = "Queue"
    return marker_line(__file__, f"wait: {marker}")


def wait_function(kind: str) -> str:
    if kind == "Condition":
        return "waiter"
    if kind == "Event":
        return "event_waiter"
    if "Queue" in kind:
        return "getter"
    return "party" if kind == "Barrier" else "hold"


@pytest.fixture
def import_time_loop() -> Iterator[Optional[asyncio.AbstractEventLoop]]:
    """Python 3.9: the loop ``asyncio.get_event_loop()`` gives code that runs with no loop
    running (a module being imported): what a primitive created there binds to."""
    if not LEGACY:
        yield None
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _run_python(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script in a fresh interpreter (LOOPGUARD and pytest's variables
    only as given)."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOPGUARD", "PYTEST_")) and k != "PYTHONWARNINGS"
    }
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# A task runner in miniature: a module-level lock, one asyncio.run() per job.
JOBS = """\
import asyncio

lock = asyncio.Lock()


async def work():
    async with lock:
        await asyncio.sleep(0.01)


async def job():
    await asyncio.gather(work(), work())


for number in (1, 2):
    try:
        asyncio.run(job())
        print(f"job {number}: ok")
    except Exception as exc:
        print(f"job {number}: {type(exc).__module__}.{type(exc).__name__}: {exc}".splitlines()[0])
"""


# == the bug, without and with loopguard ======================================================


def test_without_loopguard_asyncio_fails_with_no_word_of_the_lock(tmp_path: Path) -> None:
    """The baseline: the second job's contended acquire dies with asyncio's own error, which
    says nothing of where the lock was made (3.9: the first job already, on its first wait)."""
    result = _run_python(tmp_path, JOBS)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    if LEGACY:
        assert first.startswith("job 1: builtins.RuntimeError: Task ")
        assert "attached to a different loop" in first
    else:
        assert first == "job 1: ok"
        assert second.startswith("job 2: builtins.RuntimeError: <asyncio.locks.Lock object at ")
        assert second.endswith("is bound to a different event loop")


def test_loopguard_env_var_guards_a_program_that_imports_only_asyncio(tmp_path: Path) -> None:
    """LOOPGUARD=1: the start-up hook installs loopguard when asyncio is imported, before the
    module-level lock is created, so it gets its creation site."""
    result = _run_python(tmp_path, JOBS, LOOPGUARD="1")
    assert result.returncode == 0, result.stderr
    jobs = result.stdout.splitlines()
    failing = jobs[0] if LEGACY else jobs[1]
    assert failing.endswith(
        "loopguard.LoopMismatchError: asyncio.Lock used on event loop #2 is bound to a "
        "different event loop, loop #1; stopped before asyncio's own error."
    )
    records = [line for line in result.stderr.splitlines() if "loopguard.loop_mismatch" in line]
    assert len(records) == (2 if LEGACY else 1)  # 3.9: both jobs, on their first wait
    assert all("code=LG111" in record and "created_at=app.py:3" in record for record in records)


@bound_on_first_wait
@pytest.mark.usefixtures("_guard")
def test_a_module_level_lock_used_on_a_second_loop_raises_with_the_facts(
    request: pytest.FixtureRequest,
) -> None:
    lock = asyncio.Lock()  # lock created
    asyncio.run(wait_once(lock))  # the first loop to wait binds it, then closes
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(loopguard.LoopMismatchError) as excinfo,
    ):
        asyncio.run(wait_once(lock))
    error = excinfo.value
    test = current_test_id(request)
    created = f"{HERE}:{marker_line(__file__, 'lock created')}"
    waits = f"{HERE}:{wait_line('Lock')} in hold"
    owner, current = error.owner_loop_id, error.current_loop_id
    cause = causes_for("asyncio.Lock")["closed-loop-test"]
    assert str(error).splitlines() == [
        f"asyncio.Lock used on event loop #{current} is bound to a different event loop, loop "
        f"#{owner}; stopped before asyncio's own error.",
        f"  created at:    {created} in {request.node.name} (during {test}, no event loop running)",
        f"  bound:         first waited on during {test}, at {waits}, on loop #{owner}, which "
        "is now closed",
        f"  used now:      during {test} on loop #{current}, at {waits} (Lock.acquire)",
        f"  likely cause:  {cause.text}",
        f"  fix:           {cause.fix}",
        "  (Background on this error: `loopguard explain LG111`, "
        "or LG111 on the Error codes page of the docs)",
    ]
    assert isinstance(error, RuntimeError)
    assert (error.code, error.resource, error.created_at) == ("LG111", "asyncio.Lock", created)
    assert error.owner_loop_closed is True
    assert error.record["operation"] == "Lock.acquire"
    assert error.record["cause"] == "closed-loop-test"
    [log] = logs
    assert (log["event"], log["code"], log["log_level"]) == (
        "loopguard.loop_mismatch",
        "LG111",
        "error",
    )
    assert "healed" not in log and "created_by" not in log and "created_via" not in log


@bound_at_creation
@pytest.mark.usefixtures("_guard")
def test_python39_a_lock_created_with_no_loop_running_fails_on_the_first_new_loop(
    request: pytest.FixtureRequest, import_time_loop: asyncio.AbstractEventLoop
) -> None:
    """Python 3.9: bound at creation to asyncio.get_event_loop()'s loop (here the one a module
    being imported would get), so the first asyncio.run() already fails: cause outside-loop."""
    lock = asyncio.Lock()  # lock created outside
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(wait_once(lock))
    error = excinfo.value
    test = current_test_id(request)
    cause = causes_for("asyncio.Lock")["outside-loop"]
    lines = str(error).splitlines()
    assert lines[1] == (
        f"  created at:    {HERE}:{marker_line(__file__, 'lock created outside')} in "
        f"{request.node.name} (during {test}, no event loop running)"
    )
    assert lines[2] == (
        f"  bound:         when created, to asyncio.get_event_loop()'s loop: loop "
        f"#{error.owner_loop_id}, which is still open but not running"
    )
    assert lines[4:6] == [f"  likely cause:  {cause.text}", f"  fix:           {cause.fix}"]
    assert error.record["cause"] == "outside-loop"
    import_time_loop.run_until_complete(wait_once(lock))  # its own loop: it works there


@pytest.mark.usefixtures("_guard")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_primitive_is_stopped_on_another_loop(
    kind: str, import_time_loop: Optional[asyncio.AbstractEventLoop]
) -> None:
    """Each of asyncio's primitives: its resource, where it was created, the method that
    waited on the wrong loop, and the user's line that called it."""
    cls, args, resource, operation = KINDS[kind]
    primitive = cls(*args)  # primitive created
    if not LEGACY:
        asyncio.run(wait_once(primitive))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(wait_once(primitive))
    error = excinfo.value
    assert (error.code, error.resource) == ("LG111", resource)
    assert error.record["operation"] == operation
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'primitive created')}"
    assert error.used_at == f"{HERE}:{wait_line(kind)} in {wait_function(kind)}"


@pytest.mark.usefixtures("_guard")
def test_the_owner_loop_keeps_using_its_primitive_after_a_refusal(
    request: pytest.FixtureRequest,
) -> None:
    """raise mode refuses before asyncio's error and changes nothing: the loop the queue
    belongs to (open, not running: a wider-scoped fixture's loop) goes on using it."""
    owner = asyncio.new_event_loop()
    try:

        async def make() -> asyncio.Queue[int]:
            return asyncio.Queue()

        queue = owner.run_until_complete(make())
        owner.run_until_complete(wait_once(queue))
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(wait_once(queue))
        assert excinfo.value.record["cause"] == "idle-loop-test"
        assert excinfo.value.owner_loop_closed is False
        assert "which is still open but not running" in str(excinfo.value)
        assert not queue._getters  # type: ignore[attr-defined]  # nothing of the new loop
        owner.run_until_complete(wait_once(queue))
    finally:
        owner.close()


@pytest.mark.usefixtures("_guard")
def test_a_primitive_of_a_loop_running_in_another_thread() -> None:
    started, release = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()
    holder: list[asyncio.Event] = []

    async def owner() -> None:
        event = asyncio.Event()
        holder.append(event)
        await wait_once(event)
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=loop.run_until_complete, args=(owner(),))
    thread.start()
    try:
        assert started.wait(10)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            asyncio.run(wait_once(holder[0]))
        assert excinfo.value.record["cause"] == "running-loop"
        assert excinfo.value.owner_loop_closed is False
        assert "which is still running" in str(excinfo.value)
    finally:
        release.set()
        thread.join(10)
        loop.close()


@pytest.mark.usefixtures("_guard")
def test_a_primitive_created_and_bound_before_install_is_still_stopped() -> None:
    loopguard.uninstall()
    if LEGACY:  # bound when created, to the loop running then
        lock = asyncio.run(_created_here(asyncio.Lock))
    else:  # bound on its first wait
        lock = asyncio.Lock()
        asyncio.run(wait_once(lock))
    loopguard.install("raise")
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(wait_once(lock))
    error = excinfo.value
    assert error.created_at is None
    lines = str(error).splitlines()
    assert lines[1] == (
        "  created at:    unknown: it was created before loopguard was installed (install it "
        "earlier: LOOPGUARD=1 or the pytest plugin)"
    )
    assert lines[2] == (
        f"  bound:         before loopguard was installed, to loop #{error.owner_loop_id}, which "
        "is now closed"
    )


async def _created_here(factory: Callable[[], Any]) -> Any:
    return factory()


# == what asyncio creates for a primitive, subclasses, libraries ============================


@pytest.mark.usefixtures("_guard")
def test_a_conditions_own_lock_is_reported_as_the_condition(
    import_time_loop: Optional[asyncio.AbstractEventLoop],
) -> None:
    """Condition() makes a Lock of its own; a contended ``async with cond`` waits on that
    lock: the report names the Condition and the line that created it."""
    cond = asyncio.Condition()  # condition created

    async def enter_twice() -> None:
        async def hold() -> None:
            async with cond:  # enter: Condition
                await asyncio.sleep(0)

        await asyncio.gather(hold(), hold())

    if not LEGACY:
        asyncio.run(enter_twice())
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(enter_twice())
    error = excinfo.value
    assert (error.resource, error.record["operation"]) == ("asyncio.Condition", "Lock.acquire")
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'condition created')}"
    assert error.used_at == f"{HERE}:{marker_line(__file__, 'enter: Condition')} in hold"


@pytest.mark.usefixtures("_guard")
def test_a_queues_join_is_reported_as_the_queue(
    import_time_loop: Optional[asyncio.AbstractEventLoop],
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()  # queue created

    error = join_on_another_loop(queue)
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'queue created')}"


class Limiter(asyncio.Semaphore):
    """An application's own subclass, with an ``__init__`` of its own."""

    def __init__(self) -> None:
        super().__init__(1)


@pytest.mark.usefixtures("_guard")
def test_a_subclass_is_named_and_created_where_it_was_instantiated(
    import_time_loop: Optional[asyncio.AbstractEventLoop],
) -> None:
    limiter = Limiter()  # limiter created
    if not LEGACY:
        asyncio.run(wait_once(limiter))
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(wait_once(limiter))
    error = excinfo.value
    assert (error.resource, error.record["name"]) == ("asyncio.Semaphore", f"{__name__}.Limiter")
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'limiter created')}"
    assert str(error).startswith(f"asyncio.Semaphore ({__name__}.Limiter) used on event loop #")


class Signal(asyncio.Condition):
    """A subclass of Condition whose own __init__ makes the Condition's Lock."""

    def __init__(self) -> None:
        super().__init__()


@pytest.mark.usefixtures("_guard")
def test_the_lock_of_a_condition_subclass_is_reported_as_that_subclass(
    import_time_loop: Optional[asyncio.AbstractEventLoop],
) -> None:
    signal = Signal()  # signal created

    async def enter_twice() -> None:
        async def hold() -> None:
            async with signal:
                await asyncio.sleep(0)

        await asyncio.gather(hold(), hold())

    if not LEGACY:
        asyncio.run(enter_twice())
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(enter_twice())
    error = excinfo.value
    assert (error.resource, error.record["name"]) == ("asyncio.Condition", f"{__name__}.Signal")
    assert error.record["operation"] == "Lock.acquire"
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'signal created')}"


FAKE_LIBRARY = """\
import asyncio


class Client:
    def __init__(self):
        self.lock = asyncio.Lock()

    async def call(self):
        async with self.lock:
            await asyncio.sleep(0)


async def deep_client(depth=6):  # a Client built six frames down the library's calls
    if depth:
        return await deep_client(depth - 1)
    return Client()


async def client_task():  # a task of the library's own builds a Client
    return await asyncio.ensure_future(deep_client())


def make_queue():
    return asyncio.Queue()


async def deep_queue(depth=2):  # a Queue made by the library's code, in the caller's task
    if depth:
        return await deep_queue(depth - 1)
    return make_queue()
"""


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A library installed in a site-packages directory whose client makes its own lock."""
    site_packages = tmp_path / "lib" / "site-packages"
    (site_packages / "fakeclient").mkdir(parents=True)
    (site_packages / "fakeclient" / "__init__.py").write_text(FAKE_LIBRARY)
    monkeypatch.syspath_prepend(str(site_packages))
    module = importlib.import_module("fakeclient")
    yield module
    sys.modules.pop("fakeclient", None)


@pytest.mark.usefixtures("_guard")
def test_a_librarys_primitive_is_attributed_to_the_users_line_and_names_the_library(
    library: Any, import_time_loop: Optional[asyncio.AbstractEventLoop]
) -> None:
    """The library's lock is created in its client's __init__: the creation site is the
    user's line that created the client, and ``created_via`` the library's line."""
    client = library.Client()  # client created

    async def use() -> None:
        async def call() -> None:
            await client.call()  # call: library

        await asyncio.gather(call(), call())

    if not LEGACY:
        asyncio.run(use())
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(use())
    error = excinfo.value
    function = "Client.__init__" if sys.version_info >= (3, 11) else "__init__"
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'client created')}"
    assert error.record["created_via"] == f"fakeclient:6 in {function}"
    assert error.used_at == f"{HERE}:{marker_line(__file__, 'call: library')} in call"
    assert f", by fakeclient:6 in {function}\n" in str(error)


def _second_loop_error(client: Any) -> loopguard.LoopMismatchError:
    """``client``'s lock contended on one loop (it binds there), then on another."""

    async def use() -> None:
        async def call() -> None:
            await client.call()

        await asyncio.gather(call(), call())

    if not LEGACY:
        asyncio.run(use())
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(use())
    return excinfo.value


@pytest.mark.usefixtures("_guard")
def test_a_librarys_primitive_made_deep_in_a_task_is_attributed_to_the_tasks_line(
    library: Any,
) -> None:
    """With a loop running, a library's primitive is recorded with no walk up the stack (one
    per request must cost next to nothing): the user's line is the one the task's own
    coroutine is at, the ``await`` that led into the library."""

    async def make() -> Any:
        return await library.deep_client()  # deep client created

    error = _second_loop_error(asyncio.run(make()))
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'deep client created')}"
    assert error.record["created_via"].startswith("fakeclient:6 in ")


@pytest.mark.usefixtures("_guard")
def test_a_librarys_primitive_made_deep_in_a_library_task_says_its_line_was_not_recorded(
    library: Any, request: pytest.FixtureRequest
) -> None:
    """No user's code within the short walk nor as the task's coroutine: the message says
    the line was not recorded, and why, and still names the library's line."""
    error = _second_loop_error(asyncio.run(library.client_task()))
    assert error.created_at is None
    assert error.record["created_via"].startswith("fakeclient:6 in ")
    message = str(error)
    assert f"not recorded (during {current_test_id(request)}, in a running loop): " in message
    assert (
        "in a running loop): there loopguard keeps the library's line and the line of the "
        "task's own coroutine, which is not your code, by fakeclient:6 in "
    ) in message


@pytest.mark.usefixtures("_guard")
def test_the_event_of_a_librarys_queue_made_in_a_task_is_reported_as_the_queue(
    library: Any,
) -> None:
    """asyncio's Queue makes an Event of its own; for a Queue a library makes in a task (as
    SQLAlchemy's pool does per pool) the Event is recorded as the Queue, at the line the
    task's own coroutine is at, with the library's line that made the Queue."""

    async def make() -> Any:
        return await library.deep_queue()  # deep queue created

    queue: asyncio.Queue[int] = asyncio.run(make())

    error = join_on_another_loop(queue)
    assert error.created_at == f"{HERE}:{marker_line(__file__, 'deep queue created')}"
    assert error.record["created_via"] == "fakeclient:24 in make_queue"


# == warn mode =================================================================================


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_moves_a_primitive_whose_loop_is_closed(
    log_file: Path, import_time_loop: Optional[asyncio.AbstractEventLoop]
) -> None:
    """warn: one LoopMismatchWarning per new loop, at the user's line; the lock then works on
    the new loop as one created there would (its old loop is closed, nothing waits on it)."""
    lock = asyncio.Lock()
    with written(log_file) as out:
        for _ in range(3):
            asyncio.run(wait_once(lock))
            asyncio.run(asyncio.sleep(0))  # a loop that never waits on it: nothing to say
    expected = 3 if LEGACY else 2
    assert [w.category for w in out.warnings] == [loopguard.LoopMismatchWarning] * expected
    assert {(w.filename, w.lineno) for w in out.warnings} == {(__file__, wait_line("Lock"))}
    assert "loopguard moved it to loop #" in str(out.warnings[0].message)
    records = [json.loads(line) for line in out.file_lines]
    assert [(r["code"], r["action"], r["healed"]) for r in records] == [
        ("LG111", "warned", True)
    ] * expected
    logged = set(records[0]) - {"timestamp", "level", "event", "pid", "schema"}
    expected_fields = set(CODES["LG111"].fields) - {"name", "created_by", "created_via"}
    assert logged == expected_fields | XDIST_FIELDS


@pytest.mark.parametrize("mode", ["warn"])
@pytest.mark.usefixtures("_guard")
def test_warn_mode_cannot_move_a_primitive_still_waited_on_and_asyncio_fails() -> None:
    """A task of its loop still waits on the event: moving it would leave that waiter on the
    wrong loop, so the call goes ahead and asyncio's own error follows."""
    owner = asyncio.new_event_loop()

    async def make() -> asyncio.Event:
        return asyncio.Event()

    event = owner.run_until_complete(make())
    stranded = owner.create_task(event.wait())
    owner.run_until_complete(asyncio.sleep(0))  # the task now waits on the event
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError) as excinfo:
            asyncio.run(wait_once(event))
    assert not isinstance(excinfo.value, loopguard.LoopMismatchError)
    assert "attached to a different loop" in str(excinfo.value) or (
        "is bound to a different event loop" in str(excinfo.value)
    )
    messages = [str(w.message) for w in caught if w.category is loopguard.LoopMismatchWarning]
    assert len(messages) == 1
    assert (
        "loopguard cannot move it (its loop is running, or a task of that loop is still pending)"
        in (messages[0])
    )
    stranded.cancel()
    owner.run_until_complete(asyncio.sleep(0))
    owner.close()


@pytest.mark.parametrize("mode", ["warn"])
@pytest.mark.usefixtures("_guard")
def test_warn_mode_cannot_move_a_lock_a_pending_task_of_its_idle_loop_may_hold() -> None:
    """The lock's loop is idle (a wider-scoped fixture's loop, say) and one of its tasks holds
    the lock, suspended: moved, the new loop would wait for a release that cannot come (a
    hang where asyncio fails at once).  So a loop with pending tasks keeps its primitives:
    the warning, then asyncio's own error."""
    owner = asyncio.new_event_loop()
    lock = owner.run_until_complete(_make_lock())

    async def hold_forever() -> None:
        async with lock:
            await asyncio.sleep(3600)

    async def bind() -> None:  # one wait, given up: the lock is bound, nobody waits
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.01)

    holder = owner.create_task(hold_forever())
    try:
        owner.run_until_complete(bind())
        assert lock.locked() and not holder.done()

        async def acquire_elsewhere() -> None:
            await asyncio.wait_for(lock.acquire(), 2)  # moved: a TimeoutError after 2 s

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError) as excinfo:
                asyncio.run(acquire_elsewhere())
    finally:
        holder.cancel()
        owner.run_until_complete(asyncio.gather(holder, return_exceptions=True))
        owner.close()
    assert not isinstance(excinfo.value, loopguard.LoopMismatchError)
    assert "attached to a different loop" in str(excinfo.value) or (
        "is bound to a different event loop" in str(excinfo.value)
    )
    messages = [str(w.message) for w in caught if w.category is loopguard.LoopMismatchWarning]
    assert len(messages) == 1 and "loopguard cannot move it" in messages[0]


async def _make_lock() -> asyncio.Lock:
    return asyncio.Lock()


@pytest.mark.parametrize("mode", ["warn"])
@pytest.mark.usefixtures("_guard")
def test_warn_mode_leaves_a_primitive_of_a_running_loop_alone() -> None:
    started, release = threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()
    holder: list[asyncio.Lock] = []

    async def owner() -> None:
        lock = asyncio.Lock()
        holder.append(lock)
        await wait_once(lock)
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=loop.run_until_complete, args=(owner(),))
    thread.start()
    try:
        assert started.wait(10)
        with structlog.testing.capture_logs() as logs, warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with pytest.raises(RuntimeError) as excinfo:
                asyncio.run(wait_once(holder[0]))
        assert not isinstance(excinfo.value, loopguard.LoopMismatchError)
        assert [(log["code"], log["healed"]) for log in logs] == [("LG111", False)]
    finally:
        release.set()
        thread.join(10)
        loop.close()


# == silent on correct code ===================================================================


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_silent_on_primitives_created_inside_the_loop_that_uses_them(
    kind: str, log_file: Path
) -> None:
    cls, args = KINDS[kind][:2]

    async def job() -> None:
        primitive = cls(*args)
        for _ in range(3):
            await wait_once(primitive)

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(job())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_silent_on_one_primitive_used_on_one_loop(kind: str, log_file: Path) -> None:
    """Created with no loop running, used on one loop for the whole program (3.9: the loop
    set as current before, as it must be there)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        cls, args = KINDS[kind][:2]
        primitive = cls(*args)
        with silence_checked(log_file):
            for _ in range(3):
                loop.run_until_complete(wait_once(primitive))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_silent_on_uncontended_use_from_several_loops(
    log_file: Path, import_time_loop: Optional[asyncio.AbstractEventLoop]
) -> None:
    """A primitive that never waits is never bound: asyncio lets any loop use it, so does
    loopguard."""
    lock, event, queue = asyncio.Lock(), asyncio.Event(), asyncio.Queue()  # type: ignore[var-annotated]

    async def use() -> None:
        async with lock:
            event.set()
            await event.wait()
            event.clear()
            queue.put_nowait(1)
            await queue.get()

    with silence_checked(log_file):
        for _ in range(3):
            asyncio.run(use())


def test_silent_with_a_loop_per_thread_and_primitives_per_loop(log_file: Path) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        async def job() -> None:
            for cls, args, _, _ in KINDS.values():
                await wait_once(cls(*args))

        try:
            for _ in range(3):
                asyncio.run(job())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with silence_checked(log_file):
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []


# == install, uninstall, off, memory ==========================================================

_CLASSES = [
    getattr(asyncio, name) for name in _primitive_facts._CLASS_NAMES if hasattr(asyncio, name)
]
if not LEGACY:
    import asyncio.mixins

    _CLASSES.append(asyncio.mixins._LoopBoundMixin)
_MISSING = object()


def _class_dicts() -> dict[str, dict[str, Any]]:
    return {cls.__qualname__: dict(vars(cls)) for cls in _CLASSES}


def _expected_changes() -> list[str]:
    inits = ["Condition", "Event", "Lock", "Queue", "Semaphore"]
    if hasattr(asyncio, "Barrier"):
        inits.append("Barrier")
    changed = [f"{name}.__init__" for name in inits]
    if LEGACY:
        changed += [
            f"{name}._loop" for name in ("Condition", "Event", "Lock", "Queue", "Semaphore")
        ]
    else:
        changed.append("_LoopBoundMixin._get_loop")
    return sorted(changed)


def test_install_changes_exactly_the_documented_attributes_and_uninstall_restores_them() -> None:
    if loopguard.is_installed():
        loopguard.uninstall()
    before = _class_dicts()
    signatures = {cls: inspect.signature(cls) for cls in _CLASSES if cls.__name__ in KINDS}
    with pytest.raises(TypeError) as unguarded:
        asyncio.Lock(1)  # type: ignore[call-arg]
    loopguard.install("raise")
    try:
        during = _class_dicts()
        changed = sorted(
            f"{cls}.{name}"
            for cls, attrs in during.items()
            for name, value in attrs.items()
            if before[cls].get(name, _MISSING) is not value
        )
        assert changed == _expected_changes()
        for cls, signature in signatures.items():  # the wrappers take exactly the same arguments
            assert inspect.signature(cls) == signature, cls
        with pytest.raises(TypeError) as guarded:  # the same words for a bad call
            asyncio.Lock(1)  # type: ignore[call-arg]
        assert str(guarded.value) == str(unguarded.value)
    finally:
        loopguard.uninstall()
    after = _class_dicts()
    assert after.keys() == before.keys()
    for cls, attrs in before.items():
        assert after[cls].keys() == attrs.keys(), cls
        for name, value in attrs.items():
            assert after[cls][name] is value, f"{cls}.{name}"


def test_the_patch_table_names_every_attribute_it_changes() -> None:
    """The integration's table (read by install, uninstall and the benchmarks' checks) is what
    install() changes; Python 3.9's ``_loop`` descriptors are marked like the wrappers."""
    table = sorted(
        f"{p.owner.partition(':')[2]}.{p.attribute}"
        for p in _primitives.AsyncioPrimitivesIntegration.patches
    )
    descriptors = [c for c in _expected_changes() if c.endswith("._loop")]
    assert sorted(table + descriptors) == _expected_changes()
    assert getattr(_primitives._LoopSlot, "__loopguard_wrapped__", False) is True


def test_off_means_nothing_is_patched(tmp_path: Path) -> None:
    """LOOPGUARD unset: loopguard and asyncio imported, not one attribute of asyncio touched."""
    result = _run_python(
        tmp_path,
        """
        import asyncio
        import loopguard
        import loopguard.pytest_plugin

        lock = asyncio.Lock()
        init = asyncio.Lock.__init__
        print(loopguard.is_installed(), init.__module__, hasattr(init, "__loopguard_wrapped__"))
        print("_loop" in vars(asyncio.Lock))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False asyncio.locks False", "False"]


@pytest.mark.usefixtures("_guard", "import_time_loop")
def test_primitives_are_held_weakly_and_forgotten_when_they_die() -> None:
    gc.collect()
    before = _primitive_facts.tracked()
    locks = [asyncio.Lock() for _ in range(1000)]
    conditions = [asyncio.Condition() for _ in range(1000)]  # and their own locks
    assert _primitive_facts.tracked() == before + 3000
    del locks, conditions
    assert _primitive_facts.tracked() == before  # at once, with no collection
    for _ in range(20_000):
        asyncio.Event()
    assert _primitive_facts.tracked() == before


# == pytest: a module-level lock shared by tests on pytest-asyncio's loops ====================

SUITE = """\
import asyncio

lock = asyncio.Lock()


async def contend():
    async def hold():
        async with lock:
            await asyncio.sleep(0)

    await asyncio.gather(hold(), hold())


async def test_one():
    await contend()


async def test_two():
    await contend()


async def test_three():
    await contend()
"""


def test_pytest_run_names_the_lock_and_summarises_by_lock(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """LOOPGUARD=1 under pytest-asyncio (a loop per test): tests 2 and 3 fail with LG111, the
    summary counts the lock and groups its records by creation site, and `loopguard report`
    groups the log file's records the same way."""
    write(pytester.path, {"pytest.ini": ini(), "test_locks.py": SUITE})
    log = tmp_path / "lg.jsonl"
    for name in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOPGUARD", "1")
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(log))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    created = line_of(SUITE, "lock = asyncio.Lock()")
    if LEGACY:  # bound when the module was imported: every test's loop is another one
        result.assert_outcomes(failed=3)
        bound, failing = "E *  bound:         when created, to asyncio.get_event_loop()'s loop*", 3
    else:  # the first test to wait binds it
        result.assert_outcomes(passed=1, failed=2)
        bound, failing = (
            "E *  bound:         first waited on during test_locks.py::test_one (call)*",
            2,
        )
    tests = ["test_one", "test_two", "test_three"][-failing:]
    result.stdout.fnmatch_lines(
        [
            "E * loopguard.LoopMismatchError: asyncio.Lock used on event loop #* is bound to a "
            "different event loop, loop #*; stopped before asyncio's own error.",
            f"E *  created at:    test_locks.py:{created} in <module> (outside any test, no "
            "event loop running)",
            bound,
            "*= loopguard =*",
            f"{failing} event-loop mismatches from 1 lock:",
            f"  LG111 test_locks.py:{created} in <module>  [asyncio.Lock]",
            f"    {failing} × raised; first bound during *",
            f"    used on another loop by {failing} test(s):",
            *(f"      test_locks.py::{test}" for test in tests),
        ]
    )
    assert not re.search(r"> is bound to a different event loop", output(result))  # asyncio's
    report = subprocess.run(
        [sys.executable, "-m", "loopguard", "report", str(log)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = report.stdout.splitlines()
    assert lines[0] == f"{failing} loopguard records ({failing} raised) from 1 lock"
    assert f"[1] LG111 test_locks.py:{created} in <module>" in lines
    assert "    engine:       asyncio.Lock" in lines


# Correct code, as suites and libraries write it: nothing may be reported.
CORRECT_SUITE = """\
import asyncio
import sys

import anyio
import pytest
import pytest_asyncio

# Made at import and waited on by one test only: Python 3.10+ binds them on that first wait.
QUEUE = asyncio.Queue()
READY = asyncio.Event()
# Made at import and never waited on: asyncio accepts it on every loop.
COUNTER_LOCK = asyncio.Lock()
lazy_binding = pytest.mark.skipif(sys.version_info < (3, 10), reason="3.9 binds at creation")


@pytest_asyncio.fixture
async def lock():
    return asyncio.Lock()  # on the test's loop


class Client:
    \"\"\"A library's pattern: its lock made on first use, on the loop that uses it.\"\"\"

    def __init__(self):
        self._lock = None

    async def call(self):
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await asyncio.sleep(0)


@lazy_binding
async def test_import_time_queue_and_event_used_on_one_loop():
    async def producer():
        for number in range(3):
            await QUEUE.put(number)
            await asyncio.sleep(0)
        READY.set()

    async def consumer():
        got = [await QUEUE.get() for _ in range(3)]
        await READY.wait()
        return got

    assert (await asyncio.gather(consumer(), producer()))[0] == [0, 1, 2]


@pytest.mark.parametrize("number", [1, 2, 3])
async def test_uncontended_import_time_lock(number):
    async with COUNTER_LOCK:
        assert COUNTER_LOCK.locked()


@pytest.mark.parametrize("holders", [2, 3])
async def test_fixture_lock_contended(lock, holders):
    async def hold():
        async with lock:
            await asyncio.sleep(0)

    await asyncio.gather(*(hold() for _ in range(holders)))


async def test_every_primitive_made_and_waited_on_in_the_test():
    queue, condition = asyncio.Queue(maxsize=1), asyncio.Condition()
    semaphore, event = asyncio.BoundedSemaphore(1), asyncio.Event()

    async def put_all():
        for number in range(3):
            await queue.put(number)  # waits: the queue holds one item

    async def get_all():
        return [await queue.get() for _ in range(3)]

    assert (await asyncio.gather(get_all(), put_all()))[0] == [0, 1, 2]

    async def notify():
        await asyncio.sleep(0)
        async with condition:
            condition.notify_all()
        event.set()

    async def wait_for_notice():
        async with condition:
            await condition.wait()
        await event.wait()

    async def hold():
        async with semaphore:
            await asyncio.sleep(0)

    await asyncio.gather(wait_for_notice(), notify(), hold(), hold())
    if sys.version_info >= (3, 11):
        barrier = asyncio.Barrier(2)
        await asyncio.gather(barrier.wait(), barrier.wait())


async def test_a_client_per_test():
    client = Client()
    await asyncio.gather(client.call(), client.call())


async def test_anyio_primitives_and_streams():
    lock, event = anyio.Lock(), anyio.Event()
    send, receive = anyio.create_memory_object_stream(1)

    async def produce():
        async with send:
            for number in range(3):
                await send.send(number)
        event.set()

    async def consume():
        async with receive:
            return [number async for number in receive]

    got = await asyncio.gather(consume(), produce())
    await event.wait()
    async with lock:
        assert got[0] == [0, 1, 2]


async def test_timeouts_on_primitives():
    event = asyncio.Event()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), 0.01)
"""
# One loop for the module (pytest-asyncio 0.24+): a module-level lock contended by every test.
SHARED_LOOP_SUITE = """\
import asyncio
import sys

import pytest

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(sys.version_info < (3, 10), reason="3.9 binds at creation"),
]
LOCK = asyncio.Lock()


async def contend():
    async def hold():
        async with LOCK:
            await asyncio.sleep(0)

    await asyncio.gather(hold(), hold())


async def test_one():
    await contend()


async def test_two():
    await contend()
"""


@pytest.mark.parametrize("mode", ["1", "warn"])
def test_pytest_run_of_correct_primitive_usage_is_silent(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str
) -> None:
    """A suite that uses asyncio's primitives correctly (made inside the loop, by a fixture or
    lazily by a client; made at import and waited on from one loop only; never waited on;
    anyio's primitives and streams on asyncio) runs as without loopguard, with every
    warning an error: no failure, no warning, no summary, no record."""
    files = {"pytest.ini": ini("filterwarnings = error"), "test_correct.py": CORRECT_SUITE}
    lazy = sys.version_info >= (3, 10)  # else the tests of import-time primitives skip
    expected = 10 if lazy else 9
    if PYTEST_ASYNCIO >= (0, 24):
        files["test_shared_loop.py"] = SHARED_LOOP_SUITE
        expected += 2 if lazy else 0
    write(pytester.path, files)
    log = tmp_path / "lg.jsonl"
    for name in ("PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOOPGUARD", mode)
    monkeypatch.setenv("LOOPGUARD_LOG_FILE", str(log))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == expected, output(result)
    assert "failed" not in outcomes and "warnings" not in outcomes, output(result)
    assert "guarding" in output(result) and "asyncio" in output(result)
    assert "= loopguard =" not in output(result)
    assert not log.exists() or log.read_text() == ""
