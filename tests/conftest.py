"""Shared fixtures.  ``tools/`` is on sys.path via pytest's ``pythonpath`` setting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import ENV_URL, throwaway_http_server
from pgserver import ENV_DSN, throwaway_postgres
from redisserver import ENV_URL as ENV_REDIS_URL
from redisserver import throwaway_redis
from teststack import PYTEST_ASYNCIO

import loopguard

pytest_plugins = ["pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    if PYTEST_ASYNCIO < (0, 24):
        # pyproject.toml sets this pytest-asyncio 0.24+ option and runs with --strict-config;
        # the nox sessions of older pytest-asyncio lines run the same configuration, where
        # the option means nothing (their async fixtures always follow the fixture's scope).
        parser.addini(
            "asyncio_default_fixture_loop_scope",
            "pytest-asyncio >= 0.24 option; ignored by the installed pytest-asyncio",
        )


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a throwaway PostgreSQL server shared by the session (or LOOPGUARD_TEST_DSN)."""
    with throwaway_postgres() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def mariadb_socket() -> Iterator[str]:
    """Unix socket of a throwaway MariaDB server shared by the session (tools/mysqlserver.py);
    the test skips, saying how to get one, where there is none."""
    import mysqlserver

    why = mysqlserver.available()
    if why is not None:
        pytest.skip(why)
    with mysqlserver.throwaway_mariadb() as socket:
        yield socket


@pytest.fixture
def pg_env(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Export the DSN as LOOPGUARD_TEST_DSN, so runpytest_subprocess children reuse the server."""
    monkeypatch.setenv(ENV_DSN, pg_dsn)
    assert os.environ[ENV_DSN] == pg_dsn
    return pg_dsn


@pytest.fixture(scope="session")
def http_url() -> Iterator[str]:
    """Base URL of a throwaway HTTP/1.1 keep-alive server on 127.0.0.1, shared by the session
    (tools/httpserver.py; or LOOPGUARD_TEST_HTTP_URL)."""
    with throwaway_http_server() as url:
        yield url


@pytest.fixture
def http_env(http_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Export the URL as LOOPGUARD_TEST_HTTP_URL and HTTP_URL for child processes."""
    monkeypatch.setenv(ENV_URL, http_url)
    monkeypatch.setenv("HTTP_URL", http_url)
    return http_url


# -- the guard tests (test_sqlalchemy_guard.py, test_asyncpg_guard.py) ----------------------
# Those modules ask for ``_guard`` with ``pytestmark = pytest.mark.usefixtures("_guard")``.


@pytest.fixture
def mode() -> str:
    """loopguard's mode for the test; tests parametrize ``mode`` to run in both modes."""
    return "raise"


@pytest.fixture
def _guard(mode: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Install loopguard in ``mode`` around the test; uninstall only if still installed."""
    monkeypatch.delenv("LOOPGUARD", raising=False)
    monkeypatch.delenv("LOOPGUARD_LOG_FILE", raising=False)
    loopguard.install(mode)
    yield
    if loopguard.is_installed():
        loopguard.uninstall()


@pytest.fixture
def log_file(_guard: None, tmp_path: Path, mode: str) -> Path:
    """loopguard's JSON-lines log file for this test (install() with log_file=...)."""
    path = tmp_path / "lg.jsonl"
    loopguard.install(mode, log_file=str(path))
    path.touch()
    return path


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a throwaway redis-server shared by the session (or LOOPGUARD_TEST_REDIS_URL)."""
    with throwaway_redis() as url:
        yield url


@pytest.fixture
def redis_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Export the URL as LOOPGUARD_TEST_REDIS_URL, for runpytest_subprocess children."""
    monkeypatch.setenv(ENV_REDIS_URL, redis_url)
    return redis_url
