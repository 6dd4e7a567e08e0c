"""The throwaway redis-server machinery itself (tools/redisserver.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio as redis
from redisserver import ENV_URL, throwaway_redis, throwaway_sentinel


def _port_of(url: str) -> int:
    return int(url.split("://", 1)[1].split("/", 1)[0].rpartition(":")[2])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_redis_url_connects(redis_url: str) -> None:
    async def ping() -> bool:
        async with redis.Redis.from_url(redis_url) as client:
            return bool(await client.ping())

    assert asyncio.run(ping())


def test_server_and_sentinel_are_stopped_and_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started on 127.0.0.1 and a free port; gone (port closed, directory deleted) at exit,
    also when the block raises."""
    monkeypatch.delenv(ENV_URL, raising=False)
    with pytest.raises(KeyError), throwaway_redis() as url:
        with throwaway_sentinel(url) as sentinel:
            sentinel_port = int(sentinel.rpartition(":")[2])
            assert _accepts(sentinel_port)
        assert not _accepts(sentinel_port)
        assert url.startswith("redis://127.0.0.1:") and _accepts(_port_of(url))
        raise KeyError("the body fails")
    assert not _accepts(_port_of(url))


def test_existing_server_url_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_URL, "redis://example.invalid:6390/3")
    with throwaway_redis() as url:
        assert url == "redis://example.invalid:6390/3"


def test_redis_env_reaches_pytester_subprocess(redis_env: str, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import os

        def test_sees_url():
            assert os.environ[{ENV_URL!r}] == {redis_env!r}
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
