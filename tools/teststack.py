"""The versions of the test stack installed right now, for version-dependent skips.

loopguard's suite runs on every stack of the nox matrix (see noxfile.py): pytest-asyncio from
0.21 (the ``event_loop`` fixture era) to 1.x (``asyncio.Runner`` per loop scope), SQLAlchemy
1.4 to 2.1.  A test that needs a feature only some of them have says so with
``pytest.mark.skipif(PYTEST_ASYNCIO < (0, 24), reason=...)``, never by weakening what it checks.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Any, List, Optional, Set, Tuple

Version = Tuple[int, ...]

__all__ = [
    "ASYNCPG",
    "PYTEST",
    "PYTEST_ASYNCIO",
    "SQLALCHEMY",
    "XDIST",
    "describe",
    "installed",
    "metadata_closure",
    "requirements_closure",
]


def installed(dist: str) -> Optional[Version]:
    """``(major, minor, micro)`` of an installed distribution, or None."""
    try:
        text = version(dist)
    except PackageNotFoundError:
        return None
    match = re.match(r"\d+(\.\d+)*", text)  # "0.23.5.post1" -> 0.23.5, "2.0.0rc1" -> 2.0.0
    return tuple(int(part) for part in match.group(0).split(".")[:3]) if match else (0,)


def requirements_closure(dists: List[str]) -> List[str]:
    """The top-level modules of ``dists`` and of every distribution they require here.

    Requirements are followed as pip would install them on this Python: markers evaluated,
    extras not taken.  Distributions that are not installed are left out.
    """
    modules: List[str] = []
    for dist in _distributions_closure(dists):
        for module in _top_level_modules(dist):
            if module not in modules:
                modules.append(module)
    return modules


def metadata_closure(dists: List[str]) -> List[Path]:
    """The ``.dist-info`` directories of the same distributions (pytest reads its plugins'
    and its own versions from them)."""
    found: List[Path] = []
    for dist in _distributions_closure(dists):
        tops = {file.parts[0] for file in dist.files or []}
        found += [Path(str(dist.locate_file(top))) for top in tops if top.endswith(".dist-info")]
    return found


def _distributions_closure(dists: List[str]) -> List[Any]:
    from packaging.requirements import Requirement  # a dependency of pytest

    seen: Set[str] = set()
    found: List[Any] = []
    todo = list(dists)
    while todo:
        name = todo.pop(0)
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        found.append(dist)
    return found


def _top_level_modules(dist: Any) -> List[str]:
    found: List[str] = []
    for file in dist.files or []:
        top = file.parts[0]
        if len(file.parts) == 1:
            if not top.endswith(".py"):
                continue  # a compiled module or a .pth file
            top = top[: -len(".py")]
        if top.endswith((".dist-info", ".egg-info", ".data")) or top in ("..", "__pycache__"):
            continue
        if top not in found:
            found.append(top)
    return found


def describe(dist: str) -> str:
    found = installed(dist)
    return f"{dist} {'.'.join(map(str, found))}" if found else f"{dist} (not installed)"


PYTEST: Version = installed("pytest") or (0,)
PYTEST_ASYNCIO: Version = installed("pytest-asyncio") or (0,)
SQLALCHEMY: Version = installed("sqlalchemy") or (0,)
ASYNCPG: Version = installed("asyncpg") or (0,)
REDIS: Version = installed("redis") or (0,)
XDIST: Optional[Version] = installed("pytest-xdist")
