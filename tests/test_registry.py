"""The registries: an entry goes exactly when its object is collected, and never a newer one's."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from loopguard import _registry
from loopguard._registry import Registry


class Thing:
    pass


@pytest.fixture(autouse=True)
def _forget_test_registries() -> Iterator[None]:
    before = list(_registry._ALL)
    yield
    _registry._ALL[:] = before  # tracked_count() and clear_all() read the list


def test_entries_go_with_their_objects_across_sweeps() -> None:
    registry: Registry[int] = Registry("test things")
    things = [Thing() for _ in range(500)]
    for number, thing in enumerate(things):
        registry.add(thing, number)
    assert len(registry) == 500
    assert [registry.lookup(id(thing)) for thing in things] == list(range(500))
    del things, thing
    gc.collect()
    assert len(registry) == 0
    # The collected objects' dead references do not pile up: round after round, at most
    # twice the most objects ever tracked at once (or a small constant).
    for _ in range(50):
        survivors = [Thing() for _ in range(100)]
        for thing in survivors:
            registry.add(thing, 0)
        del survivors, thing
        assert len(registry._refs) <= 2 * 500 + 1
    gc.collect()
    assert len(registry) == 0


def test_a_replaced_or_discarded_entry_never_removes_a_newer_one() -> None:
    registry: Registry[str] = Registry("test things")
    thing = Thing()
    registry.add(thing, "first")
    registry.add(thing, "second")  # the first reference is replaced
    assert registry.lookup(id(thing)) == "second"
    registry.discard(thing)
    registry.add(thing, "third")
    assert registry.lookup(id(thing)) == "third"
    key = id(thing)
    del thing
    gc.collect()
    assert registry.lookup(key) is None
    # A new object at a reused address starts untracked, and its entry stays while it lives.
    for _ in range(1000):
        newer = Thing()
        if id(newer) == key:
            break
    registry.add(newer, "newer")
    gc.collect()
    assert registry.lookup(id(newer)) == "newer"
    found = registry.find(id(newer))
    assert found is not None and found[0] is newer
