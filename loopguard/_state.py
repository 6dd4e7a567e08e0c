"""The one piece of process-wide state: whether loopguard is installed, and how."""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from ._log import JsonLinesSink

TYPE_CHECKING = False
if TYPE_CHECKING:  # the API's off path imports this module: nothing more than it needs
    from ._activation import Activation

Listener = Callable[[dict[str, Any]], None]


class State:
    __slots__ = ("mode", "activation", "sink", "listeners", "lock", "enabled", "skipped")

    def __init__(self) -> None:
        self.mode: Optional[str] = None  # None: not installed; read on every guarded call
        self.activation: Optional[Activation] = None  # who asked for the mode in effect
        self.sink: Optional[JsonLinesSink] = None
        self.listeners: list[Listener] = []
        self.lock = threading.RLock()
        self.enabled: list[str] = []  # integrations that are active
        self.skipped: dict[str, str] = {}  # integration name -> why it did not enable

    @property
    def installed(self) -> bool:
        return self.mode is not None

    def __repr__(self) -> str:
        if self.mode is None or self.activation is None:
            return "<loopguard state: not installed>"
        return (
            f"<loopguard state: mode={self.mode!r} (from {self.activation.describe()}), "
            f"guarding={self.enabled}, skipped={self.skipped}, log_file={self.sink!r}>"
        )


STATE = State()
