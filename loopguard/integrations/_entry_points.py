"""Third-party integrations: the entry-point group ``loopguard.integrations``, the way pytest
finds plugins (``[project.entry-points."loopguard.integrations"] name = "pkg.mod:Class"``)."""

from __future__ import annotations

import sys


def entries(group: str) -> list[tuple[str, str]]:
    """``(name, "module:Class")`` of every entry point in ``group``, in a stable order."""
    from importlib.metadata import entry_points

    if sys.version_info >= (3, 10):
        found = entry_points(group=group)
    else:  # Python 3.9: a dict of groups
        found = entry_points().get(group, ())
    return sorted({(entry.name, entry.value) for entry in found})
