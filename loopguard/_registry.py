"""What loopguard knows about the objects it tracks, held weakly and kept off the objects.

Nothing is stored on a tracked object (no attribute, no ``info`` entry): the application sees
exactly what it put there.  Facts live in a ``Registry``, keyed by ``id(obj)``; a weak
reference to the object (or, for objects that cannot be weakly referenced, such as asyncpg's
``Pool``, to an *anchor* that lives exactly as long) drops the entry when the object is
collected, so an id is never mistaken for a newer object's.

A hot path reads an entry with ``registry.lookup(id(obj))``: a dict lookup, no Python call.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from . import _context

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._loops import LoopRef
    from ._sites import Site


class Origin:
    """Where and when an object was created (shared by an engine and its successive pools)."""

    __slots__ = ("site", "created_during", "created_in_loop", "known", "_fixture")

    def __init__(
        self,
        site: Optional[Site],
        created_during: Optional[str],
        created_in_loop: Optional[bool],
        known: bool = True,
        fixture: Any = None,
    ) -> None:
        self.site = site
        self.created_during = created_during  # the test (and phase) running then
        self.created_in_loop = created_in_loop  # was a loop running?
        self.known = known  # False: found after the fact (created before install())
        # The pytest fixture whose setup created it: looked up here, so every guard's origins
        # carry it; kept as the setup's (FixtureDef, function) and described only when a
        # message or record reads it (``fixture``).  A text is also accepted.
        if fixture is None and known and _context.fixtures_in_setup:
            fixture = _context.fixture_in_setup()
        self._fixture = fixture

    @property
    def fixture(self) -> Optional[str]:
        """The fixture whose setup created it, as messages name it: ``session-scoped fixture
        'engine' at conftest.py:12``; None if it was not created by a fixture's setup."""
        fixture = self._fixture
        if fixture is None or isinstance(fixture, str):
            return fixture
        described = self._fixture = _context.describe_fixture(*fixture)
        return described

    @property
    def fixture_entry(self) -> Any:
        """What ``fixture`` is made from (for a copy of this origin: no description made)."""
        return self._fixture

    def __repr__(self) -> str:
        where = str(self.site) if self.site else "unknown site"
        return f"<Origin {where}, during {self.created_during}>"


class Binding:
    """The loop an object belongs to, and where and when it was bound to it."""

    __slots__ = ("loop", "site", "during")

    def __init__(self, loop: LoopRef, site: Optional[Site], during: Optional[str]) -> None:
        self.loop = loop
        self.site = site  # the user's line that bound it (first connection, first use)
        self.during = during  # the test (and phase) running then

    def __repr__(self) -> str:
        return f"<Binding to {self.loop.describe()}, during {self.during}>"


class Tracked:
    """The facts of one tracked object: its origin, its binding, and what loopguard did."""

    __slots__ = ("origin", "binding", "heals", "warned_loop")

    def __init__(self, origin: Origin, binding: Optional[Binding] = None) -> None:
        self.origin = origin
        self.binding = binding  # None: not bound to a loop (yet, or again)
        self.heals = 0  # warn mode: times loopguard moved it to a new loop
        self.warned_loop: Optional[int] = None  # warn mode: the loop already warned about

    def __repr__(self) -> str:
        bound = self.binding.loop.describe() if self.binding else "not bound to a loop"
        return f"<{type(self).__name__} {self.origin!r}, {bound}>"


T = TypeVar("T")


class _KeyedRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference that knows its registry key (as WeakValueDictionary's KeyedRef).

    No ``__new__``/``__init__`` of its own: built by weakref's C constructor, then given its
    key (two Python frames fewer per tracked object)."""

    __slots__ = ("key",)
    key: int


class Registry(Generic[T]):
    """Facts about live objects by ``id()``; an entry goes when its object is collected.

    The weak reference's callback runs while the object is being freed, before its memory
    (and so its id) can be reused: an entry never outlives its object.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._entries: dict[int, T] = {}
        self._refs: dict[int, _KeyedRef] = {}
        self.lookup = self._entries.get  # lookup(id(obj)): the hot path's read
        _ALL.append(self)

    def add(self, obj: Any, facts: T, anchor: Any = None) -> T:
        """Track ``obj``; ``anchor``: an object that dies with it, when ``obj`` cannot be
        weakly referenced.  Without either the entry stays until ``discard``/``clear``."""
        key = id(obj)
        try:
            ref = _KeyedRef(obj if anchor is None else anchor, self._collected)
        except TypeError:
            self._refs.pop(key, None)
        else:
            ref.key = key
            self._refs[key] = ref
        self._entries[key] = facts
        return facts

    def get(self, obj: Any) -> Optional[T]:
        return self._entries.get(id(obj))

    def discard(self, obj: Any) -> Optional[T]:
        """Forget ``obj``; returns its facts, if it was tracked."""
        key = id(obj)
        self._refs.pop(key, None)  # the reference dies with its callback unrun
        return self._entries.pop(key, None)

    def _collected(self, ref: _KeyedRef) -> None:
        if self._refs.get(ref.key) is ref:
            del self._refs[ref.key]
            self._entries.pop(ref.key, None)

    def live(self) -> Iterator[tuple[Any, T]]:
        """(object, facts) of the tracked objects that can be reached (not via an anchor)."""
        for key, facts in list(self._entries.items()):
            ref = self._refs.get(key)
            obj = ref() if ref is not None else None
            if obj is not None and id(obj) == key:
                yield obj, facts

    def find(self, key: int) -> Optional[tuple[Any, T]]:
        """(object, facts) of the live object tracked under ``key`` (its ``id()``), or None."""
        ref = self._refs.get(key)
        obj = ref() if ref is not None else None
        facts = self._entries.get(key)
        if obj is None or facts is None or id(obj) != key:
            return None
        return obj, facts

    def ids(self) -> set[int]:
        """The ids of the tracked objects."""
        return set(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def clear(self) -> None:
        self._refs.clear()
        self._entries.clear()

    def __contains__(self, obj: Any) -> bool:
        return id(obj) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Registry {self.name}: {len(self._entries)} tracked>"


_ALL: list[Registry[Any]] = []


def clear_all() -> None:
    """Forget everything every registry knows (``uninstall()``)."""
    for registry in _ALL:
        registry.clear()


def tracked_count() -> int:
    """How many objects loopguard tracks right now, in every registry."""
    return sum(len(registry) for registry in _ALL)
