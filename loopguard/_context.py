"""What is running right now: the test, its root directory, the xdist worker."""

from __future__ import annotations

import os
from typing import Optional

# Set by the pytest plugin to the rootdir so paths print relative to it.
rootdir: Optional[str] = None
# Set by the pytest plugin: PYTEST_CURRENT_TEST is only meaningful in pytest's own process
# (a script started by a test inherits the variable and would blame that test).
in_pytest = False
# Set by the pytest plugin in a pytest-xdist worker: its id ("gw0"), logged with each record.
worker: Optional[str] = None


def current_test() -> Optional[str]:
    """The pytest node id and phase running now, e.g. ``tests/test_a.py::test_x (call)``."""
    return os.environ.get("PYTEST_CURRENT_TEST") if in_pytest else None
