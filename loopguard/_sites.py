"""Finding the user's line of code on the stack, cheaply.

A bounded walk over ``f_back`` (never ``inspect.stack()``, which reads source files): the
first frame outside loopguard, SQLAlchemy, asyncio, functools, greenlet and the standard
library is "the user's".  Inside SQLAlchemy's greenlet bridge the chain stops at the
greenlet entry, so the walk continues in the parent greenlet, where the awaiting
coroutines are.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, Optional

MAX_FRAMES = 80


class Site(NamedTuple):
    """A place in the user's code: ``path:line in function`` (path relative to the rootdir)."""

    path: str
    lineno: int
    function: str
    filename: str  # absolute, for warnings.warn_explicit

    @property
    def location(self) -> str:
        return f"{self.path}:{self.lineno}"

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno} in {self.function}"


def _module_dir(name: str) -> Optional[str]:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    return os.path.dirname(file) + os.sep if file else None


def _internal_prefixes() -> tuple[str, ...]:
    prefixes = [os.path.dirname(__file__) + os.sep]
    # The libraries between the user's code and the pool; pytest's own machinery too, so a
    # record made while pytest-asyncio closes a loop does not name a line of pytest-asyncio.
    for name in (
        "sqlalchemy",
        "greenlet",
        "asyncpg",
        "httpx",
        "httpcore",
        "aiohttp",
        "asyncio",
        "psycopg",
        "redis",
        "psycopg_pool",
        "uvloop",
        "pytest_asyncio",
        "_pytest",
        "pluggy",
        # What runs the user's coroutines on loops of its own: anyio's portals and its pytest
        # plugin, Starlette's TestClient (and the httpx or httpx2 client it is), asgiref's
        # async_to_sync.
        "anyio",
        "starlette",
        "httpx2",
        "asgiref",
    ):
        directory = _module_dir(name)
        if directory:
            prefixes.append(directory)
    return tuple(prefixes)


def _stdlib_and_site_packages() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Directory prefixes of the standard library and of site-packages (as is, and resolved)."""
    import sysconfig  # ~2 ms: only when a site is first looked for, not on import

    paths = sysconfig.get_paths()
    stdlib = {paths["stdlib"] + os.sep, os.path.realpath(paths["stdlib"]) + os.sep}
    site_packages = {paths[k] + os.sep for k in ("purelib", "platlib")}
    site_packages |= {os.path.realpath(paths[k]) + os.sep for k in ("purelib", "platlib")}
    return tuple(stdlib), tuple(site_packages)


_prefixes: tuple[str, ...] = ()
_stdlib: tuple[str, ...] = ()
_site_packages: tuple[str, ...] = ()


class _Verdicts(dict):  # type: ignore[type-arg]
    """filename -> internal?  ``verdicts[filename]`` decides a file seen for the first time:
    a walk reads it with one subscript per frame, no Python call."""

    def __missing__(self, filename: str) -> bool:
        global _prefixes, _stdlib, _site_packages
        if not _prefixes:
            _prefixes = _internal_prefixes()
        if not _stdlib:
            _stdlib, _site_packages = _stdlib_and_site_packages()
        verdict = (
            filename.startswith("<")
            or filename.startswith(_prefixes)
            or (filename.startswith(_stdlib) and not filename.startswith(_site_packages))
        )
        self[filename] = verdict
        return verdict


_verdicts: dict[str, bool] = _Verdicts()


def _is_internal(filename: str) -> bool:
    return _verdicts[filename]


is_internal = _is_internal

_library_verdicts: dict[str, bool] = {}
_PACKAGE_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def is_library(filename: str) -> bool:
    """Not the user's code: loopguard's, a guarded library's, the standard library's, or any
    installed package's (a file under a site-packages or dist-packages directory)."""
    verdict = _library_verdicts.get(filename)
    if verdict is None:
        verdict = (
            _is_internal(filename)  # (loads the prefixes _site_packages is one of)
            or any(part in filename for part in _PACKAGE_DIRS)
            or filename.startswith(_site_packages)
        )
        _library_verdicts[filename] = verdict
    return verdict


def site_of(frame: FrameType, root: Optional[str] = None) -> Site:
    """The place ``frame`` is at, as messages show it."""
    code = frame.f_code
    filename = code.co_filename
    shown = _displayed.get((filename, root or os.getcwd()))  # display_path()'s cache, inline
    if shown is None:
        shown = display_path(filename, root)
    # tuple.__new__: what Site(...) does, without the Python __new__ NamedTuple generates.
    return _new_tuple(Site, (shown, frame.f_lineno, code.co_name, filename))


_new_tuple = tuple.__new__


# Caches of other modules built on the verdicts above: emptied with them.
_dependent_caches: list[dict[str, Any]] = []


def dependent_cache() -> dict[str, Any]:
    """A dict keyed by file name, emptied whenever the verdicts are (``reset_caches``)."""
    cache: dict[str, Any] = {}
    _dependent_caches.append(cache)
    return cache


def reset_caches() -> None:
    """Forget cached verdicts (used on install: libraries may have been imported since)."""
    global _prefixes
    _verdicts.clear()  # in place: a _Verdicts, whose __missing__ decides each file afresh
    _library_verdicts.clear()
    _displayed.clear()
    for cache in _dependent_caches:
        cache.clear()
    _prefixes = ()


def _parent_greenlet_frame() -> Optional[FrameType]:
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return None
    parent = greenlet.getcurrent().parent
    return parent.gr_frame if parent is not None else None


def user_site(root: Optional[str] = None, skip: int = 1) -> Optional[Site]:
    """The first frame of user code above the caller, or None if none is found in the bound."""
    frame: Optional[FrameType] = sys._getframe(skip)
    verdicts = _verdicts  # _is_internal(), without the call (a walk: ~15 frames)
    hopped = False
    for _ in range(MAX_FRAMES):
        if frame is None:
            if hopped:
                return None
            frame, hopped = _parent_greenlet_frame(), True
            if frame is None:
                return None
        if verdicts[frame.f_code.co_filename]:
            frame = frame.f_back
            continue
        return site_of(frame, root)
    return None


# (filename, base directory) -> what display_path() returns.  Path.resolve() walks the
# file system (an lstat per path component, ~40 us a call); a process sees few distinct files.
_displayed: dict[tuple[str, str], str] = {}


def display_path(filename: str, root: Optional[str] = None) -> str:
    """Relative to the root directory (pytest's rootdir, else the cwd) when under it."""
    base = root or os.getcwd()
    key = (filename, base)
    shown = _displayed.get(key)
    if shown is None:
        try:
            shown = Path(filename).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            shown = filename
        _displayed[key] = shown
    return shown
