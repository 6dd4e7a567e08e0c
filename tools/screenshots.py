"""Screenshots of the documentation site as a browser shows it, to look at before a release.

Builds the site (``mkdocs build --strict``, into a temporary directory), serves it on
127.0.0.1 (a free port, ``http.server`` in a thread of this process), photographs the pages of
``SHOTS`` with headless Chromium at 1280x900, and stops the server; the PNG files go to
``build/screenshots/`` (or ``--out``).  Needs the docs extra (``pip install -e ".[docs]"``)
and Chromium (Debian: ``apt-get install chromium``), so it is not part of the test suite;
``scripts/screenshots`` runs it.

Each screenshot is checked to be a PNG of the window's size, and the page's HTML to hold what
the picture should show (highlighted code, the search box); what it looks like is for a person
to see.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, List, NamedTuple, Optional

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT = 1280, 900
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class Shot(NamedTuple):
    name: str
    path: str  # the page and what follows it in the address: a #section, a ?q= search
    # JavaScript, truthy once the page shows what the picture is for; its value is printed.
    ready: str


_LOADED = 'document.readyState === "complete"'
_FIRST_OUTPUT_SCROLLS = """(() => {
  const block = [...document.querySelectorAll(".highlight")].find(b => b.querySelector(".gp"));
  if (document.readyState !== "complete" || !block) return null;
  block.scrollIntoView();
  window.scrollBy(0, -80);
  const code = block.querySelector("code"), style = getComputedStyle(code);
  const scrolls = ["auto", "scroll"].includes(style.overflowX) && style.whiteSpace === "pre"
    && code.scrollWidth > code.clientWidth;
  return scrolls && `lines ${code.scrollWidth}px wide scroll in a box ${code.clientWidth}px wide`;
})()"""
_CAUSES_TABLE_FITS = """(() => {
  const table = [...document.querySelectorAll("table")]
    .find(t => /likely cause/.test(t.textContent));
  if (document.readyState !== "complete" || !table) return null;
  table.scrollIntoView();
  window.scrollBy(0, -80);
  const box = table.closest(".md-typeset__scrollwrap") || table.parentElement;
  return table.scrollWidth <= box.clientWidth
    && `table ${table.scrollWidth}px wide in a page ${box.clientWidth}px wide`;
})()"""
_CODES_TABLE_FITS = """(() => {
  const table = document.querySelector(".md-content table");
  const highlighted = document.querySelectorAll(".highlight .kn, .highlight .gp").length;
  if (document.readyState !== "complete" || !table || !highlighted) return null;
  const box = table.closest(".md-typeset__scrollwrap") || table.parentElement;
  return table.scrollWidth <= box.clientWidth
    && `codes table ${table.scrollWidth}px wide in a page ${box.clientWidth}px wide, `
    + `${highlighted} highlighted tokens`;
})()"""
SHOTS = (
    Shot("home", "", f'{_LOADED} && document.querySelector(".md-content h1").textContent'),
    # The table of codes, which must fit the page (not scroll in its box); Pygments' classes
    # on the code further down.
    Shot("errors", "errors/", _CODES_TABLE_FITS),
    # The first real output (long lines), scrolled into view: its lines must scroll sideways
    # in their box, unwrapped, not be cut.
    Shot("errors-output", "errors/", _FIRST_OUTPUT_SCROLLS),
    # LG101's table of causes and fixes, prose in three columns: it must fit the page.
    Shot("errors-causes", "errors/", _CAUSES_TABLE_FITS),
    # Material's search on the static build, opened from the address (?q=): its results.
    Shot(
        "search",
        "errors/?q=dispose",
        '(document.querySelector(".md-search-result__meta") || {}).textContent'
        ' && /^\\d+ matching/.test(document.querySelector(".md-search-result__meta").textContent)'
        ' && document.querySelector(".md-search-result__meta").textContent',
    ),
)


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(
        "screenshots: no Chromium found (tried " + ", ".join(BROWSERS) + "); on Debian: "
        "apt-get install chromium"
    )


def build_site(site: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"screenshots: mkdocs build --strict failed:\n{done.stderr}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve ``site`` on a free port of 127.0.0.1 until the block ends."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe (``--remote-debugging-
    pipe``: JSON messages ending in NUL on file descriptors 3 and 4), so that a screenshot is
    taken when the page is ready, not after a fixed time: scrolled to its #section, search
    results shown.  Plain ``--screenshot`` shows nothing for an address with a #section."""

    def __init__(self, executable: str, profile: str) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        command = [
            executable,
            "--headless",
            "--no-sandbox",  # Chromium's sandbox does not run as root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ]
        # Chromium reads the protocol from descriptor 3 and writes it to 4: a shell puts the
        # pipe's ends there (no preexec_fn: this process has the web server's thread).
        self._process = subprocess.Popen(
            ["sh", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "sh", *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._session: Optional[str] = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise SystemExit("screenshots: the browser closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command, wait for its answer (events meanwhile are dropped)."""
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None:
            request["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise SystemExit(f"screenshots: {method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        answer = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in answer:
            raise SystemExit(f"screenshots: {expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def open(self, url: str, ready: str) -> Any:
        """Load ``url`` and wait (at most 20 s) until the JavaScript ``ready`` is truthy; its
        last value."""
        self.call("Page.navigate", url=url)
        return self.evaluate(
            "new Promise(done => { const end = Date.now() + 20000; const poll = () => {"
            f" let value; try {{ value = ({ready}); }} catch (e) {{ value = null; }}"
            # Once ready, half a second for the theme's transitions (the header's title).
            " if (value || Date.now() > end) setTimeout(() => done(value || null), 500);"
            " else setTimeout(poll, 100);"
            " }; poll(); })"
        )

    def screenshot(self, out: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(SystemExit, OSError):
            self.call("Browser.close")
        os.close(self._to_browser)
        os.close(self._from_browser)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@contextlib.contextmanager
def browser(executable: str) -> Iterator[Browser]:
    with tempfile.TemporaryDirectory() as profile:
        driven = Browser(executable, profile)
        try:
            yield driven
        finally:
            driven.close()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    if header[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"screenshots: {path} is not a PNG file")
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "build" / "screenshots", help="where the PNGs go"
    )
    args = parser.parse_args(argv)
    executable = find_browser()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        build_site(site)
        with serve(site) as base, browser(executable) as chromium:
            for shot in SHOTS:
                shown = chromium.open(base + shot.path, shot.ready)
                if not shown:
                    raise SystemExit(
                        f"screenshots: {base + shot.path} never got ready: {shot.ready}"
                    )
                out = args.out / f"{shot.name}.png"
                chromium.screenshot(out)
                if png_size(out) != (WIDTH, HEIGHT):
                    raise SystemExit(f"screenshots: {out} is {png_size(out)}, not {WIDTH}x{HEIGHT}")
                print(f"{out}  ({shot.name}: {shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
