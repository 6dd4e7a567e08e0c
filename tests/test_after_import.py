"""_after_import: a callback right after a module's first import, and cancelling it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from loopguard import _after_import


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("lg_after_import_")]:
        del sys.modules[name]


def test_callback_runs_once_after_the_module_body(module_dir: Path) -> None:
    (module_dir / "lg_after_import_a.py").write_text("VALUE = 42\n")
    seen: list[int] = []
    hook = _after_import.call_after_import("lg_after_import_a", lambda m: seen.append(m.VALUE))
    import lg_after_import_a  # type: ignore[import-not-found]  # noqa: F401

    assert seen == [42]
    assert hook.cancelled  # done: it will not run again
    assert "lg_after_import_a" not in _after_import.waiting()


def test_cancelled_before_the_import_nothing_runs(module_dir: Path) -> None:
    (module_dir / "lg_after_import_b.py").write_text("VALUE = 1\n")
    seen: list[ModuleType] = []
    hook = _after_import.call_after_import("lg_after_import_b", seen.append)
    _after_import.cancel(hook)
    import lg_after_import_b  # type: ignore[import-not-found]  # noqa: F401

    assert seen == []
    assert "lg_after_import_b" not in _after_import.waiting()


def test_cancelled_while_the_import_is_under_way_nothing_runs(module_dir: Path) -> None:
    """uninstall() during an import of uvloop must not wrap uvloop afterwards."""
    (module_dir / "lg_after_import_c.py").write_text(
        "import lg_after_import_hooks\n"
        "from loopguard import _after_import\n"
        "_after_import.cancel(lg_after_import_hooks.HOOK)\n"
    )
    hooks = ModuleType("lg_after_import_hooks")
    sys.modules["lg_after_import_hooks"] = hooks
    seen: list[ModuleType] = []
    hooks.HOOK = _after_import.call_after_import("lg_after_import_c", seen.append)  # type: ignore[attr-defined]
    import lg_after_import_c  # type: ignore[import-not-found]  # noqa: F401

    assert seen == []
    assert "lg_after_import_c" not in _after_import.waiting()


def test_one_finder_serves_every_callback_and_leaves_when_none_waits(module_dir: Path) -> None:
    """Every import the process attempts asks each finder on sys.meta_path: however many
    callbacks wait, loopguard puts one finder there, and takes it away when none is left."""
    (module_dir / "lg_after_import_d.py").write_text("VALUE = 4\n")
    (module_dir / "lg_after_import_e.py").write_text("VALUE = 5\n")
    before = [f for f in sys.meta_path if type(f).__module__ == "loopguard._after_import"]
    seen: list[int] = []
    _after_import.call_after_import("lg_after_import_d", lambda m: seen.append(m.VALUE))
    _after_import.call_after_import("lg_after_import_d", lambda m: seen.append(-m.VALUE))
    _after_import.call_after_import("lg_after_import_e", lambda m: seen.append(m.VALUE))
    ours = [f for f in sys.meta_path if type(f).__module__ == "loopguard._after_import"]
    assert len(ours) == 1
    import lg_after_import_d  # type: ignore[import-not-found]  # noqa: F401
    import lg_after_import_e  # type: ignore[import-not-found]  # noqa: F401

    assert seen == [4, -4, 5]
    still = [f for f in sys.meta_path if type(f).__module__ == "loopguard._after_import"]
    assert still == before  # gone again, unless something else of loopguard still waits
