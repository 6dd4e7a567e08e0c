"""loopguard.track() / check() / unbind(): the public API for any loop-bound object (LG107).

Real event loops throughout (``asyncio.run``, ``new_event_loop``, a loop in another thread);
the object is a plain class of the test's, as a library's own client would be.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
import structlog
from guard_helpers import current_test_id, display_path, marker_line

import loopguard
from loopguard import _api

pytestmark = pytest.mark.usefixtures("_guard")  # loopguard installed in ``mode``


class Client:
    """A library's loop-bound client: it registers itself, and checks before each request."""

    def __init__(self, name: Optional[str] = None) -> None:
        loopguard.track(self, name=name)

    async def request(self) -> str:
        loopguard.check(self)  # check: request
        await asyncio.sleep(0)
        return "ok"

    def close(self) -> None:
        loopguard.unbind(self)


def _on_new_loop(client: Client) -> tuple[str, Any]:
    seen: list[Any] = []

    async def main() -> str:
        seen.append(asyncio.get_running_loop())
        return await client.request()

    return asyncio.run(main()), seen[0]


def test_a_tracked_object_used_on_a_second_loop_raises_with_the_facts(
    request: pytest.FixtureRequest,
) -> None:
    client = Client(name="billing API")  # created here
    created_line = marker_line(__file__, "created here")
    assert _on_new_loop(client)[0] == "ok"  # binds it to the first loop, which then closes
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(loopguard.LoopMismatchError) as excinfo,
    ):
        _on_new_loop(client)
    error = excinfo.value
    here = display_path(__file__)
    check_line = marker_line(__file__, "check: request")
    assert error.code == "LG107"
    assert error.resource == "test_api.Client"
    assert error.created_at == f"{here}:{created_line}"
    assert error.created_in == request.node.name
    assert error.record["name"] == "billing API"
    assert error.record["bound_at"] == f"{here}:{check_line} in request"
    assert error.owner_loop_closed is True
    # Inside a test (loopguard's own suite runs under pytest): the test-flavoured cause.
    assert error.used_during == current_test_id(request)
    assert error.record["cause"] == "closed-loop-test"
    message = str(error)
    assert message.splitlines()[0] == (
        f"test_api.Client (billing API) used on event loop #{error.current_loop_id}, but it "
        f"belongs to loop #{error.owner_loop_id}; stopped before any I/O."
    )
    assert f"  created at:    {here}:{created_line} in {request.node.name}" in message
    background = (
        "(Background on this error: `loopguard explain LG107`, "
        "or LG107 on the Error codes page of the docs)"
    )
    assert background in message
    assert [log["event"] for log in logs] == ["loopguard.loop_mismatch"]
    assert logs[0]["code"] == "LG107" and logs[0]["log_level"] == "error"


def test_track_from_inside_the_objects_init_names_the_line_that_created_it() -> None:
    """Frames whose ``self`` is the tracked object (its __init__, a subclass's) are skipped."""

    class Sub(Client):
        def __init__(self) -> None:
            super().__init__(name=None)

    sub = Sub()  # sub created
    _on_new_loop(sub)
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        _on_new_loop(sub)
    assert excinfo.value.created_at == (
        f"{display_path(__file__)}:{marker_line(__file__, 'sub created')}"
    )


@pytest.mark.parametrize("mode", ["warn"])
def test_warn_mode_warns_once_per_loop_at_the_users_line_and_carries_on(mode: str) -> None:
    client = Client()
    _on_new_loop(client)
    loop = asyncio.new_event_loop()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                assert loop.run_until_complete(client.request()) == "ok"
    finally:
        loop.close()
    assert [w.category for w in caught] == [loopguard.LoopMismatchWarning]
    assert caught[0].filename == __file__
    assert caught[0].lineno == marker_line(__file__, "check: request")
    assert "loopguard let the call go ahead." in str(caught[0].message)


def test_unbind_lets_the_next_loop_take_it() -> None:
    """The analogue of engine.dispose(): released on one loop, bound again on the next."""
    client = Client()
    for _ in range(3):
        assert _on_new_loop(client)[0] == "ok"
        client.close()


def test_no_loop_running_checks_nothing_and_binds_nothing() -> None:
    client = Client()

    async def nothing() -> None:
        pass

    loopguard.check(client)  # no loop runs: nothing to compare with
    asyncio.run(nothing())
    assert _on_new_loop(client)[0] == "ok"  # bound here, by this first use on a loop


def test_check_without_track_tracks_from_the_first_use() -> None:
    class Untracked:
        async def request(self) -> None:
            loopguard.check(self)

    thing = Untracked()
    asyncio.run(thing.request())
    with pytest.raises(loopguard.LoopMismatchError) as excinfo:
        asyncio.run(thing.request())
    assert excinfo.value.created_at is None
    assert "created at:    unknown: it was created before loopguard tracked it" in str(
        excinfo.value
    )


def test_an_object_of_a_loop_running_in_another_thread() -> None:
    client = Client()
    loop = asyncio.new_event_loop()
    started, release = threading.Event(), threading.Event()

    async def hold() -> None:
        await client.request()
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)

    thread = threading.Thread(target=loop.run_until_complete, args=(hold(),))
    thread.start()
    try:
        assert started.wait(10)
        with pytest.raises(loopguard.LoopMismatchError) as excinfo:
            _on_new_loop(client)
        assert excinfo.value.record["cause"] == "running-loop"
        assert excinfo.value.owner_loop_closed is False
    finally:
        release.set()
        thread.join(10)
        loop.close()


def test_tracked_objects_are_held_weakly() -> None:
    from loopguard._tracking import OBJECTS

    before = len(OBJECTS)
    clients = [Client() for _ in range(100)]
    for client in clients:
        _on_new_loop(client)
    assert len(OBJECTS) == before + 100
    del clients, client
    gc.collect()
    assert len(OBJECTS) == before


def test_uninstall_forgets_every_tracked_object() -> None:
    client = Client()
    _on_new_loop(client)
    loopguard.uninstall()
    loopguard.install("raise")
    assert _on_new_loop(client)[0] == "ok"  # not tracked any more: bound again, silently


def test_off_the_calls_are_no_ops_that_import_nothing(tmp_path: Path) -> None:
    """A library may call the API unconditionally: with loopguard off, nothing happens and
    none of loopguard's machinery is imported."""
    code = textwrap.dedent(
        """\
        import asyncio, sys
        import loopguard

        class Client:
            pass

        client = Client()
        assert loopguard.track(client, name="x") is client

        async def use():
            loopguard.check(client)

        asyncio.run(use())
        asyncio.run(use())
        loopguard.unbind(client)
        loaded = sorted(m for m in sys.modules if m.startswith("loopguard."))
        print(loaded)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "['loopguard._api', 'loopguard._errors', 'loopguard._log', 'loopguard._state']"
    )


def test_the_api_is_public_and_typed() -> None:
    assert {"track", "check", "unbind"} <= set(loopguard.__all__)
    assert loopguard.track is _api.track
    assert loopguard.check is _api.check
    assert loopguard.unbind is _api.unbind
