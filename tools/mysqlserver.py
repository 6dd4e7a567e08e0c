"""Throwaway MariaDB servers for the tests of SQLAlchemy's MySQL async dialects (aiomysql,
asyncmy) under loopguard.

``throwaway_mariadb()`` is a context manager yielding the path of the server's unix socket
(user ``root``, no password, a database ``loopguard``; no TCP).  The server runs from a fresh
temporary directory and is stopped and deleted on exit (also when the body raises).

Where the server comes from, in order:

1. ``LOOPGUARD_TEST_MARIADB_SOCKET`` set: that socket (user ``root``, database ``loopguard``),
   nothing starts.
2. ``mariadbd`` and ``mariadb-install-db`` on PATH or in ``/usr/sbin``, ``/usr/bin``
   (Debian: ``apt-get install mariadb-server-core mariadb-client-core``; ``.ci/run`` does).
   No PyPI package ships a MariaDB or MySQL server, so none is installed by pip.  As root the
   server runs with ``--user=root`` (mariadbd refuses root otherwise).

``available()`` says why there is no server (None when there is one): the tests skip then.

Command line::

    python tools/mysqlserver.py check            # start, print the socket and the server
                                                 # version, stop
    python tools/mysqlserver.py run -- CMD ...   # run CMD with LOOPGUARD_TEST_MARIADB_SOCKET
                                                 # set, exit with CMD's exit code
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import quote

import throwaway

__all__ = ["ENV_SOCKET", "available", "sqlalchemy_url", "throwaway_mariadb"]

ENV_SOCKET = "LOOPGUARD_TEST_MARIADB_SOCKET"
DATABASE = "loopguard"
_SEARCH = ("/usr/sbin", "/usr/bin")
INSTALL_HINT = (
    "no MariaDB server for the MySQL driver tests: `apt-get install mariadb-server-core "
    f"mariadb-client-core` (Debian; .ci/run does), or set {ENV_SOCKET} to a running server's "
    "unix socket (user root, database loopguard)"
)


def sqlalchemy_url(socket: str, driver: str) -> str:
    """``mysql+DRIVER://root@localhost/loopguard?unix_socket=...`` for SQLAlchemy."""
    return f"mysql+{driver}://root@localhost/{DATABASE}?unix_socket={quote(socket, safe='')}"


def _find(name: str) -> Optional[str]:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))


def _binaries() -> Optional[Tuple[str, str]]:
    server, install_db = _find("mariadbd"), _find("mariadb-install-db")
    return (server, install_db) if server and install_db else None


def available() -> Optional[str]:
    """None when a server can be had; else why not."""
    if os.environ.get(ENV_SOCKET) or _binaries() is not None:
        return None
    return INSTALL_HINT


@contextlib.contextmanager
def throwaway_mariadb() -> Iterator[str]:
    """Yield the unix socket of a MariaDB server that lives as long as the block."""
    socket = os.environ.get(ENV_SOCKET)
    if socket:
        yield socket
        return
    found = _binaries()
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    server, install_db = found
    base = tempfile.mkdtemp(prefix="loopguard-my-", dir="/tmp")  # a short socket path
    data, socket = os.path.join(base, "data"), os.path.join(base, "mysqld.sock")
    log = os.path.join(base, "server.log")
    user = ["--user=root"] if throwaway.is_root() else []
    init = os.path.join(base, "init.sql")
    Path(init).write_text(f"CREATE DATABASE IF NOT EXISTS {DATABASE};\n")
    proc = None
    try:
        done = subprocess.run(
            [
                install_db,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *user,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout}{done.stderr}")
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    server,
                    "--no-defaults",
                    f"--datadir={data}",
                    f"--socket={socket}",
                    f"--pid-file={os.path.join(base, 'mysqld.pid')}",
                    f"--init-file={init}",
                    "--skip-networking",
                    "--innodb-flush-log-at-trx-commit=0",
                    *user,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if throwaway.wait_ready(proc, partial(_says_ready, log), 60, 0.1) != "ready":
            raise RuntimeError(f"mariadbd did not start:\n{Path(log).read_text()}")
        yield socket
    finally:
        if proc is not None:
            throwaway.stop(proc, 30)
        shutil.rmtree(base, ignore_errors=True)


def _says_ready(log: str) -> bool:
    return "ready for connections" in Path(log).read_text(errors="replace")


# -- command line --------------------------------------------------------------


def _server_version(socket: str) -> str:
    import pymysql

    conn = pymysql.connect(unix_socket=socket, user="root", database=DATABASE)
    try:
        with conn.cursor() as cursor:
            cursor.execute("select version()")
            return str(cursor.fetchone()[0])
    finally:
        conn.close()


def main(argv: Optional[List[str]] = None) -> int:
    return throwaway.main("mysqlserver.py", throwaway_mariadb, ENV_SOCKET, _server_version, argv)


if __name__ == "__main__":
    sys.exit(main())
