"""Integrations as patch tables: applied when their library is imported, undone exactly, and
open to third parties through the entry-point group ``loopguard.integrations``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import loopguard
from loopguard._patching import WRAPPED_MARK
from loopguard.integrations import ENTRY_POINT_GROUP, all_integrations
from loopguard.integrations._base import Patch

ABSENT = object()


def _tables() -> list[tuple[str, Patch]]:
    """Every patch of every built-in integration whose library is installed here."""
    found = []
    for integration in all_integrations():
        try:
            importlib.import_module(integration.module)
        except ImportError:
            continue
        found += [(integration.name, patch) for patch in integration.patches]
    return found


def _slot(patch: Patch) -> Any:
    importlib.import_module(patch.module)
    return patch.resolve().__dict__.get(patch.attribute, ABSENT)


@pytest.fixture
def _off(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("LOOPGUARD", raising=False)
    monkeypatch.delenv("LOOPGUARD_LOG_FILE", raising=False)
    yield
    if loopguard.is_installed():
        loopguard.uninstall()


@pytest.mark.usefixtures("_off")
def test_every_patch_of_every_table_goes_on_and_comes_off_exactly() -> None:
    """The tables are what install() applies and uninstall() undoes, attribute by attribute;
    a patch that is not required may be absent (an older library)."""
    tables = _tables()
    assert {name for name, _ in tables} >= {"sqlalchemy", "asyncpg", "asyncio-loops"}
    before = {str(patch): _slot(patch) for _, patch in tables}
    loopguard.install("raise")
    for name, patch in tables:
        during = _slot(patch)
        if during is ABSENT and not patch.required:
            continue
        assert getattr(during, WRAPPED_MARK, False) is True, f"{name}: {patch} not patched"
        assert during is not before[str(patch)]
    loopguard.uninstall()
    after = {str(patch): _slot(patch) for _, patch in tables}
    for key, value in before.items():
        assert after[key] is value, key


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as the script ``app.py`` in ``cwd``, without loopguard's settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPGUARD", "PYTEST_"))}
    clean.update(env)
    (cwd / "app.py").write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_install_imports_no_guarded_library_and_patches_it_when_it_is_imported(
    tmp_path: Path,
) -> None:
    """A process that never imports SQLAlchemy or asyncpg does not pay for importing them;
    one that imports them after install() is guarded from that import on; an uninstall()
    before the import leaves it untouched."""
    result = _python(
        """
        import sys
        import loopguard
        loopguard.install("raise")
        print("imported by install:", sorted(
            m for m in ("sqlalchemy", "asyncpg", "uvloop") if m in sys.modules))
        from sqlalchemy.pool import QueuePool
        print("before the trigger:", hasattr(QueuePool._do_get, "__loopguard_wrapped__"))
        import sqlalchemy.ext.asyncio
        print("after the trigger:", hasattr(QueuePool._do_get, "__loopguard_wrapped__"))
        loopguard.uninstall()
        loopguard.install("raise")
        loopguard.uninstall()
        import asyncpg
        from asyncpg.connection import Connection
        print("asyncpg after uninstall:", hasattr(Connection._check_open, "__loopguard_wrapped__"))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported by install: []",
        "before the trigger: False",
        "after the trigger: True",
        "asyncpg after uninstall: False",
    ]


THIRD_PARTY_GUARD = '''
"""A third party's guard for its own loop-bound client, through the public API."""
import loopguard
from loopguard.integrations import Integration, Patch


def _checked(original):
    async def request(self, *args, **kwargs):
        loopguard.check(self)
        return await original(self, *args, **kwargs)
    return request


def _tracked(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        loopguard.track(self, name="the shop API")
    return __init__


class ShopIntegration(Integration):
    name = "shop"
    module = "shopclient"
    patches = (
        Patch("shopclient:Client", "__init__", _tracked),
        Patch("shopclient:Client", "request", _checked),
    )
'''

SHOP_CLIENT = """
import asyncio


class Client:
    def __init__(self):
        self.calls = 0

    async def request(self):
        self.calls += 1
        await asyncio.sleep(0)
        return "ok"
"""


def test_a_third_party_integration_is_found_through_its_entry_point(tmp_path: Path) -> None:
    """A distribution that declares ``[loopguard.integrations] shop = shopguard:ShopIntegration``
    is enabled like the built-in ones, patched when its library is imported, and its objects
    are reported with the facts of the public API (LG107)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "shopguard.py").write_text(THIRD_PARTY_GUARD)
    (site / "shopclient.py").write_text(SHOP_CLIENT)
    dist_info = site / "shopguard-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: shopguard\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nshop = shopguard:ShopIntegration\n"
    )
    result = _python(
        """
        import asyncio
        import loopguard
        from loopguard._state import STATE

        loopguard.install("raise")
        print("guarding:", STATE.enabled)
        import shopclient

        client = shopclient.Client()  # the line that created it
        print(asyncio.run(client.request()))
        try:
            asyncio.run(client.request())
        except loopguard.LoopMismatchError as exc:
            print(exc.code, exc.record["name"], exc.created_at, exc.record["cause"])
        loopguard.uninstall()
        print(asyncio.run(client.request()), client.calls)
        """,
        tmp_path,
        PYTHONPATH=str(site),
    )
    assert result.returncode == 0, result.stderr
    builtin = [i.name for i in all_integrations() if not i.core]
    assert result.stdout.splitlines() == [
        f"guarding: {[*builtin, 'shop']}",
        "ok",
        "LG107 the shop API app.py:10 closed-loop-run",
        "ok 2",
    ]


def test_an_entry_point_that_names_no_integration_is_a_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "notaguard.py").write_text("VALUE = 1\n")
    dist_info = site / "notaguard-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: notaguard\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbad = notaguard:VALUE\n")
    result = _python(
        """
        import loopguard
        try:
            loopguard.install("raise")
        except loopguard.ConfigError as exc:
            print("ConfigError:", exc)
        print("installed:", loopguard.is_installed())
        """,
        tmp_path,
        PYTHONPATH=str(site),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ConfigError: the entry point 'bad' of the group loopguard.integrations names "
        "notaguard:VALUE, which is not a loopguard Integration subclass",
        "installed: False",
    ]
