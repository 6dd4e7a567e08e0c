"""Rows 5: start-up and "off means no patches".

5a ``import loopguard``; 5e ``install()``; 5b the ``.pth`` start-up hook with ``LOOPGUARD``
unset; 5c off means no patches (the integrations' patch tables, the wrapper-mark scan, no
listener, no start-up import); 5d ``install()`` then ``uninstall()`` restores every class
attribute of every loaded module.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from _arms import ArmState, arm
from _env import BENCH_DIR, NEUTRAL_CWD, REPO, clean_env, log, python_output, time_process
from _patch_tables import marked_points
from _report import Report, Row
from _stats import fmt_stat, fmt_time, median, quartiles
from _worker import patched_attributes

from . import Context

_OFF_CHECK = r"""
import json, os, sys
out = {"env": sorted(k for k in ("LOOPGUARD", "PYTHONASYNCIODEBUG") if k in os.environ)}
out["loopguard_imported_at_startup"] = "loopguard" in sys.modules
out["finders"] = [type(f).__name__ for f in sys.meta_path if "loopguard" in type(f).__module__]
from sqlalchemy.pool import QueuePool
from sqlalchemy.ext.asyncio import AsyncEngine
import asyncpg
for optional in ("httpx", "aiohttp"):
    try:
        __import__(optional)
    except ImportError:
        pass
sys.path.insert(0, BENCH_DIR)
from _patch_tables import changed_since, class_dicts, points
before = class_dicts()  # every class of every loaded module, before loopguard is imported
originals = {n: (o.__dict__[a].__module__, o.__dict__[a].__qualname__)
             for n, (o, a) in {"QueuePool._do_get": (QueuePool, "_do_get"),
                               "QueuePool.dispose": (QueuePool, "dispose"),
                               "AsyncEngine.__init__": (AsyncEngine, "__init__")}.items()}
import loopguard, loopguard.pytest_plugin
out["installed"] = loopguard.is_installed()
out["identical_after_import"] = all(
    (o.__dict__[a].__module__, o.__dict__[a].__qualname__) == originals[n]
    for n, (o, a) in {"QueuePool._do_get": (QueuePool, "_do_get"),
                      "QueuePool.dispose": (QueuePool, "dispose"),
                      "AsyncEngine.__init__": (AsyncEngine, "__init__")}.items())
out["original_modules"] = originals
# The integrations' own patch tables: every point of the imported libraries as it was.
out["table_points"] = len(points())
out["table_changed"] = changed_since(before)
from _worker import patched_attributes
out["wrapped"] = patched_attributes()
from sqlalchemy import event
from sqlalchemy.engine import Engine
# Any listener of loopguard's left on the Engine class (it listens to none since issue 11.2).
def listeners(collection):
    try:
        return list(collection)
    except TypeError:  # SQLAlchemy 2.1: on the class, the listeners are per class
        return [fn for fns in getattr(collection, "_clslevel", {}).values() for fn in fns]
out["listener"] = any(
    (getattr(fn, "__module__", "") or "").startswith("loopguard")
    for name in ("engine_disposed", "engine_connect", "before_cursor_execute")
    for fn in listeners(getattr(Engine.dispatch, name))
)
out["engine_has_events"] = Engine._has_events
print(json.dumps(out))
"""


_UNINSTALL_CHECK = r"""
import json, sys
import sqlalchemy.ext.asyncio, sqlalchemy.engine, asyncpg, asyncio
try:
    import uvloop
except ImportError:
    pass
MISSING = object()
classes = {}
for module in list(sys.modules.values()):
    for obj in list(getattr(module, "__dict__", {}).values()):
        if isinstance(obj, type) and id(obj) not in classes:
            classes[id(obj)] = (obj, dict(vars(obj)))
import loopguard
loopguard.install("raise")
loopguard.uninstall()
changed = []
for cls, before in classes.values():
    after = vars(cls)
    for name in set(before) | set(after):
        if before.get(name, MISSING) is not after.get(name, MISSING):
            changed.append(f"{cls.__module__}.{cls.__qualname__}.{name}: "
                           f"{before.get(name, '(absent)')!r} -> {after.get(name, '(absent)')!r}")
print(json.dumps(sorted(changed)))
"""


_INSTALL_TIMING = """
import sys, time
import sqlalchemy.ext.asyncio, asyncpg, loopguard
t = time.perf_counter()
loopguard.install("raise")
print(time.perf_counter() - t, f"uvloop:{'uvloop' in sys.modules}")
"""


def _alternate(
    cmds: Dict[str, Tuple[List[str], Dict[str, str]]], pairs: int
) -> Dict[str, List[float]]:
    names = list(cmds)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for n in names:  # warm the page cache and .pyc files; not recorded
        time_process(*cmds[n])
    for p in range(pairs):
        for n in names if p % 2 == 0 else reversed(names):
            times[n].append(time_process(*cmds[n]))
    return times


def run(ctx: Context) -> None:
    _startup(ctx.report, ctx.quick)
    _uninstall(ctx.report)


def _startup(report: Report, quick: bool) -> None:
    pairs = 10 if quick else 60
    py = sys.executable
    env = clean_env()
    cwd_env = dict(env)
    log(f"[5] start-up: {pairs} alternating pairs per comparison")

    # 5a: python -c "import loopguard" vs python -c pass, same interpreter, same site.
    times = _alternate(
        {
            "pass": ([py, "-c", "pass"], cwd_env),
            "import": ([py, "-c", "import loopguard"], cwd_env),
        },
        pairs,
    )
    diffs = [i - p for i, p in zip(times["import"], times["pass"])]
    added = median(diffs)
    inproc = []
    for _ in range(5 if quick else 15):
        out = python_output(
            "import time; t = time.perf_counter(); import loopguard; "
            "print(time.perf_counter() - t)",
            cwd_env,
        )
        inproc.append(float(out))
    report.add(
        Row(
            "5a",
            '`python -c "import loopguard"` vs `python -c pass` (process wall time)',
            {
                "off": "pass: " + fmt_stat(times["pass"]),
                "raise": "import loopguard: " + fmt_stat(times["import"]),
            },
            compare=f"+{fmt_time(added)} [{fmt_time(quartiles(diffs)[0])}.."
            f"{fmt_time(quartiles(diffs)[2])}]; in-process import {fmt_stat(inproc)}",
            target="import adds < 5 ms",
            verdict=added < 5e-3,
        )
    )

    # 5e: install() itself, in a fresh process that has imported SQLAlchemy's asyncio
    # extension and asyncpg already (as a conftest.py or an application has): the cost of
    # importing loopguard's integrations and applying the patches, once per process.
    installs = []
    for _ in range(5 if quick else 15):
        out = python_output(_INSTALL_TIMING, cwd_env).split()
        installs.append(float(out[0]))
        if out[1:] != ["uvloop:False"]:
            raise AssertionError(f"install() imported uvloop: {out}")
    report.add(
        Row(
            "5e",
            "`loopguard.install()` in a fresh process that has imported SQLAlchemy's asyncio "
            "extension and asyncpg (once per process; no target in issue 5)",
            {"raise": fmt_stat(installs)},
            compare="uvloop not imported by install()",
        )
    )

    # 5b: the .pth hook, LOOPGUARD unset.  Two throwaway venvs of the same base interpreter,
    # identical but for asyncio_loopguard.pth in one's site-packages: the only difference
    # between the arms is the hook's line being processed by site.py.
    with tempfile.TemporaryDirectory(prefix="loopguard-bench-venv-") as tmp:
        base = getattr(sys, "_base_executable", sys.executable)
        venvs = {}
        for name in ("plain", "hook"):
            d = Path(tmp) / name
            subprocess.run([base, "-m", "venv", "--without-pip", str(d)], check=True, env=env)
            vpy = str(d / "bin" / "python")
            purelib = subprocess.run(
                [vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout.strip()
            if name == "hook":
                shutil.copy(REPO / "asyncio_loopguard.pth", purelib)
            venvs[name] = vpy
        hook_check = subprocess.run(
            [venvs["hook"], "-c", "import sys; print('loopguard' in sys.modules)"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()[0]
        times = _alternate(
            {
                "plain": ([venvs["plain"], "-c", "pass"], env),
                "hook": ([venvs["hook"], "-c", "pass"], env),
            },
            pairs,
        )
    diffs = [h - p for h, p in zip(times["hook"], times["plain"])]
    hook_added = median(diffs)
    line = (REPO / "asyncio_loopguard.pth").read_text().strip()
    code = compile(line, "asyncio_loopguard.pth", "exec")
    n = 100000
    t0 = time.perf_counter()
    for _ in range(n):
        exec(code, {})  # noqa: S102 - exactly what site.py does with the line
    per_exec = (time.perf_counter() - t0) / n
    report.add(
        Row(
            "5b",
            "interpreter start-up, .pth hook installed + LOOPGUARD unset vs plain venv",
            {
                "off": "plain: " + fmt_stat(times["plain"]),
                "raise": "hook: " + fmt_stat(times["hook"]),
            },
            compare=f"{fmt_time(median(diffs))} [{fmt_time(quartiles(diffs)[0])}.."
            f"{fmt_time(quartiles(diffs)[2])}]; the hook line itself "
            f"{fmt_time(per_exec)} (exec, in-process)",
            target="adds < 5 ms",
            verdict=hook_added < 5e-3 and hook_check == "False",
            note=f"loopguard imported at start-up: {hook_check}",
        )
    )

    # 5c: off means no patches at all: a process with the hook installed, LOOPGUARD unset,
    # loopguard and its pytest plugin imported, SQLAlchemy and asyncpg imported.
    out = subprocess.run(
        [py, "-c", _OFF_CHECK.replace("BENCH_DIR", repr(str(BENCH_DIR)))],
        env=cwd_env,
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
    ).stdout
    facts = json.loads(out)
    with arm("raise"):  # and on: exactly these are patched; uninstall() restores the originals
        patched_when_on = patched_attributes()
        table_on, table_missed = marked_points()  # every point of the imported libraries
    ok = (
        bool(patched_when_on)
        and bool(table_on)
        and not table_missed
        and (
            not facts["loopguard_imported_at_startup"]
            and not facts["finders"]
            and not facts["installed"]
            and facts["identical_after_import"]
            and all(mod.startswith("sqlalchemy.") for mod, _ in facts["original_modules"].values())
            and not facts["wrapped"]
            and facts["table_points"] > 0
            and not facts["table_changed"]
            and not facts["listener"]
            and facts["engine_has_events"] is False
            and hook_check == "False"
        )
    )
    report.add(
        Row(
            "5c",
            "off means no patches: LOOPGUARD unset, loopguard + plugin + SQLAlchemy + asyncpg "
            "imported",
            {
                "off": f"patch tables: {facts['table_points']} points, changed: "
                + (", ".join(facts["table_changed"]) or "none")
                + "; wrapped attrs: "
                + (", ".join(facts["wrapped"]) or "none")
                + f"; listener: {facts['listener']}; Engine._has_events: "
                f"{facts['engine_has_events']}; start-up import: "
                f"{facts['loopguard_imported_at_startup']}",
                "raise": f"install() wraps {len(patched_when_on)} attributes ("
                + ", ".join(
                    f"{lib} {n}"
                    for lib, n in collections.Counter(
                        p.split(".")[0] for p in patched_when_on
                    ).items()
                )
                + f"); patch-table points patched: {len(table_on)}, missed: "
                + (", ".join(table_missed) or "none")
                + f"; uninstall() restored the originals exactly ({ArmState.restores_checked} "
                "times in this run)",
            },
            target="no patches when off",
            verdict=ok,
            note="also asserted before every off/debug round and in the off pytest runs",
        )
    )


def _uninstall(report: Report) -> None:
    """5d: after install() + uninstall(), is every class attribute what it was before?"""
    out = subprocess.run(
        [sys.executable, "-c", _UNINSTALL_CHECK],
        env=clean_env(),
        check=True,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
    ).stdout
    changed = json.loads(out)
    report.add(
        Row(
            "5d",
            "install() then uninstall() in a fresh process: class attributes (all loaded "
            "modules) that differ from before install()",
            {"off": "-", "raise": "; ".join(changed) or "none"},
            note="README: uninstall() restores every patched attribute exactly; no target "
            "in issue 5, reported for the record",
        )
    )
