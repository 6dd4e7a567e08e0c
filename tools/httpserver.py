"""A throwaway HTTP/1.1 keep-alive server on 127.0.0.1 for loopguard's httpx and aiohttp tests.

``throwaway_http_server()`` is a context manager yielding the server's base URL
(``http://127.0.0.1:PORT``).  The server is an ``aiohttp.web`` application (aiohttp is in the
``test`` extra) run in a child process, so the clients under test have the process and its
event loops to themselves; it listens on a free port of the loopback interface only and is
stopped when the block ends, also when the body raises.  ``LOOPGUARD_TEST_HTTP_URL`` set: that
URL is yielded unchanged and nothing starts.

Routes, every response keep-alive unless the client says otherwise:

- ``GET /`` and any other path: ``200 ok``.
- ``GET /hit/KEY``: counts a request for KEY; the body is the client's port, which tells
  which connection the request came on.  ``GET /count/KEY``: how many requests KEY had.
- ``GET /delay?seconds=S``: ``200 ok`` after S seconds (at most 10).
- ``GET /stream``: a chunked body sent in 2 parts 0.2 s apart.

Command line::

    python tools/httpserver.py serve          # serve until SIGTERM (prints the URL first)
    python tools/httpserver.py run -- CMD ... # run CMD with LOOPGUARD_TEST_HTTP_URL set
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import List, Optional

__all__ = ["ENV_URL", "throwaway_http_server"]

ENV_URL = "LOOPGUARD_TEST_HTTP_URL"
START_TIMEOUT = 30.0
MAX_DELAY = 10.0


def _serve() -> int:
    """Serve on a free loopback port; print ``URL <url>`` once listening; stop on SIGTERM."""
    import asyncio

    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    counts: dict[str, int] = {}

    async def hit(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        counts[key] = counts.get(key, 0) + 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.Response(text=str(peer[1] if peer else 0))

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(counts.get(request.match_info["key"], 0)))

    async def delay(request: web.Request) -> web.Response:
        seconds = min(float(request.query.get("seconds", "0")), MAX_DELAY)
        await asyncio.sleep(seconds)
        return web.Response(text="ok")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"part 1\n")
        await asyncio.sleep(0.2)
        await response.write(b"part 2\n")
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/hit/{key}", hit)
        app.router.add_get("/count/{key}", count)
        app.router.add_get("/delay", delay)
        app.router.add_get("/stream", stream)
        app.router.add_route("*", "/{tail:.*}", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"URL http://127.0.0.1:{port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    return 0


@contextlib.contextmanager
def throwaway_http_server() -> Iterator[str]:
    """Start the server in a child process; yield its base URL; stop it."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPGUARD")}
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "serve"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = _first_line(child)
        if not line.startswith("URL "):
            raise RuntimeError(f"the test HTTP server did not start: {line!r}")
        yield line.split(" ", 1)[1].strip()
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def _first_line(child: subprocess.Popen) -> str:  # type: ignore[type-arg]
    import selectors

    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT):
            return f"nothing printed in {START_TIMEOUT:.0f} s"
    return child.stdout.readline() or f"exited with status {child.wait()}"


def _run_with_server(cmd: List[str]) -> int:
    with throwaway_http_server() as url:
        return subprocess.call(cmd, env={**os.environ, ENV_URL: url})


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["serve"]:
        return _serve()
    if args[:1] == ["run"] and len(args) > 2 and args[1] == "--":
        return _run_with_server(args[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
