"""The throwaway PostgreSQL machinery itself (tools/pgserver.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
from pgserver import ENV_DSN, sqlalchemy_url


def test_pg_dsn_connects_with_asyncpg(pg_dsn: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def select_one() -> int:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return int(await conn.fetchval("select 1"))
        finally:
            await conn.close()

    assert asyncio.run(select_one()) == 1


def test_pg_dsn_connects_with_sqlalchemy(pg_dsn: str) -> None:
    pytest.importorskip("asyncpg")
    pytest.importorskip("sqlalchemy.ext.asyncio")
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def select_one() -> int:
        engine = create_async_engine(sqlalchemy_url(pg_dsn))
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text("select 1"))).scalar_one())
        finally:
            await engine.dispose()

    assert asyncio.run(select_one()) == 1


def test_pg_env_exports_dsn(pg_env: str) -> None:
    assert os.environ[ENV_DSN] == pg_env


@pytest.mark.parametrize(
    ("dsn", "driver", "expected"),
    [
        (
            "postgresql://postgres@/postgres?host=/tmp/x&port=5432",
            "asyncpg",
            "postgresql+asyncpg://postgres@/postgres?host=/tmp/x&port=5432",
        ),
        ("postgres://u:p@h:5/db", "psycopg", "postgresql+psycopg://u:p@h:5/db"),
        # only the scheme changes, even if the text recurs later
        ("postgresql://u@h/postgresql://", "asyncpg", "postgresql+asyncpg://u@h/postgresql://"),
    ],
)
def test_sqlalchemy_url(dsn: str, driver: str, expected: str) -> None:
    assert sqlalchemy_url(dsn, driver=driver) == expected


def test_sqlalchemy_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        sqlalchemy_url("mysql://u@h/db")


def test_pg_env_reaches_pytester_subprocess(pg_env: str, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import os

        def test_sees_dsn():
            assert os.environ[{ENV_DSN!r}] == {pg_env!r}
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
