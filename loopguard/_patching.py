"""Attribute patches that are undone exactly, in reverse order, like a stack."""

from __future__ import annotations

import functools
from typing import Any, Callable

_MISSING = object()
WRAPPED_MARK = "__loopguard_wrapped__"


class PatchStack:
    """Records every replaced attribute so ``restore()`` puts back exactly what was there.

    An attribute inherited from a base class is recorded as absent and deleted on restore,
    so the subclass goes back to inheriting it.
    """

    def __init__(self) -> None:
        self._applied: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, make_wrapper: Callable[[Any], Any]) -> None:
        current = getattr(owner, name)
        if getattr(current, WRAPPED_MARK, False):
            # Never save our own wrapper as "the original".
            msg = f"{owner.__qualname__}.{name} is already wrapped by loopguard"
            raise RuntimeError(msg)
        previous = owner.__dict__.get(name, _MISSING)
        wrapper = make_wrapper(current)
        functools.update_wrapper(wrapper, current)
        setattr(wrapper, WRAPPED_MARK, True)
        setattr(owner, name, wrapper)
        self._applied.append((owner, name, previous))

    def restore(self) -> None:
        while self._applied:
            owner, name, previous = self._applied.pop()
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)

    def __len__(self) -> int:
        return len(self._applied)

    def __repr__(self) -> str:
        names = [f"{owner.__qualname__}.{name}" for owner, name, _ in self._applied]
        return f"<PatchStack {names}>"
