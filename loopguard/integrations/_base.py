"""What an integration is: a library, the versions it supports, and a table of patch points.

An integration declares its patches in one table (``Integration.patches``) that
``install()``, ``uninstall()``, the tests and the benchmarks' "off means no patches" check
all read.  Patches are applied when the library is imported: at ``install()`` for a library
imported already, otherwise right after its first import (``_after_import``), so a process
that never imports a guarded library never pays for importing it.

Built-in integrations and third-party ones (entry-point group ``loopguard.integrations``,
each naming an ``Integration`` subclass) use this same interface.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any, Callable, ClassVar, NamedTuple, Optional

Wrapper = Callable[[Any], Any]  # the original attribute -> its replacement


class DidNotEnable(Exception):
    """The library an integration guards is missing or too old; the message says which."""


class Patch(NamedTuple):
    """Replace ``owner.attribute`` with ``wrapper(original)``.

    ``owner`` is ``"module:Class"`` (or ``"module"`` for a module attribute).  A patch that is
    not ``required`` is skipped where the attribute does not exist (an older library).
    """

    owner: str
    attribute: str
    wrapper: Wrapper
    required: bool = True

    @property
    def module(self) -> str:
        return self.owner.partition(":")[0]

    def resolve(self) -> Any:
        """The owner object; its module must be imported already."""
        module_name, _, qualname = self.owner.partition(":")
        target: Any = sys.modules[module_name]
        for part in filter(None, qualname.split(".")):
            target = getattr(target, part)
        return target

    def __str__(self) -> str:
        return f"{self.owner.replace(':', '.')}.{self.attribute}"


def version_tuple(text: str) -> tuple[int, ...]:
    """``"1.4.24"`` -> ``(1, 4, 24)``; pre-release tails are dropped (``"2.0.0b4"`` -> 2.0.0)."""
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group(0).split(".")[:3]) if match else (0,)


class Integration:
    """Base class of every integration (subclass it; class attributes describe it).

    - ``name``: short and unique (``"sqlalchemy"``), shown in the pytest header.
    - ``module``: the module whose import brings the library in reach of the patches
      (``"sqlalchemy.ext.asyncio"``); patches are applied right after it is imported.
    - ``min_version`` and ``version_of(module)``: older versions are refused at that point.
    - ``label`` and ``requirement``: the library's name and pip requirement, for messages.
    - ``patches``: the patch table.
    - ``setup()`` / ``teardown()``: anything that is not a patch (event listeners, objects
      created before the patches), run after the patches are applied / before they are undone.
    """

    name: ClassVar[str]
    module: ClassVar[str]
    min_version: ClassVar[tuple[int, ...]] = ()
    label: ClassVar[str] = ""  # the library as people write it ("SQLAlchemy"); default: name
    requirement: ClassVar[str] = ""  # what pip installs ("sqlalchemy[asyncio]")
    patches: ClassVar[tuple[Patch, ...]] = ()
    core: ClassVar[bool] = False  # part of loopguard itself (loop close): guards nothing alone
    # Set before setup(): the library was imported before install(), so objects of it may
    # exist that no patch saw being created.
    imported_before_install = False

    def version_of(self, module: Any) -> Optional[str]:
        """The library's version, read from the imported module (``__version__``)."""
        top = sys.modules.get(self.module.partition(".")[0], module)
        version = getattr(top, "__version__", None)
        return version if isinstance(version, str) else None

    def not_installed(self) -> str:
        """Why it is skipped when its library cannot be imported."""
        top = self.module.partition(".")[0]
        hint = f"; pip install {_quoted(self.requirement)}" if self.requirement else ""
        return f"{self.label or self.name} is not installed (No module named '{top}'){hint}"

    def check(self, module: Any) -> None:
        """Raise ``DidNotEnable`` when the imported library cannot be guarded."""
        version = self.version_of(module)
        if self.min_version and version is not None and version_tuple(version) < self.min_version:
            oldest = ".".join(map(str, self.min_version))
            wanted = _quoted(f"{self.requirement}>={oldest}")
            hint = f"; pip install -U {wanted}" if self.requirement else ""
            label = self.label or self.name
            msg = f"{label} {version} is too old: loopguard supports {oldest} and newer{hint}"
            raise DidNotEnable(msg)
        missing = [
            str(patch) for patch in self.patches if patch.required and not _has_attribute(patch)
        ]
        if missing:
            msg = f"{self.label or self.name} {version or ''} lacks {', '.join(missing)}".replace(
                "  ", " "
            )
            raise DidNotEnable(msg)

    def setup(self) -> None:
        """After the patches are applied."""

    def teardown(self) -> None:
        """Before the patches are undone: remove listeners, forget tracked objects."""

    def __repr__(self) -> str:
        return f"<loopguard integration {self.name!r} ({self.module})>"


def _quoted(requirement: str) -> str:
    """As a shell needs it: ``asyncpg``, ``'sqlalchemy[asyncio]'``."""
    import shlex

    return shlex.quote(requirement)


def _has_attribute(patch: Patch) -> bool:
    try:
        importlib.import_module(patch.module)
        return hasattr(patch.resolve(), patch.attribute)
    except (ImportError, AttributeError):
        return False


def load(spec: str) -> type[Integration]:
    """``"package.module:ClassName"`` -> the Integration subclass it names."""
    module_name, _, attribute = spec.partition(":")
    value = getattr(importlib.import_module(module_name), attribute)
    if not (isinstance(value, type) and issubclass(value, Integration)):
        msg = "which is not a loopguard Integration subclass"
        raise TypeError(msg)
    return value
