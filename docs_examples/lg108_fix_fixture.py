"""LG108, fix: one client per test, created and closed on the test's own loop."""

import os

import httpx
import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def client():
    async with httpx.AsyncClient(base_url=os.environ["HTTP_URL"]) as client:
        yield client


@pytest.mark.asyncio
async def test_first(client):
    assert (await client.get("/")).status_code == 200


@pytest.mark.asyncio
async def test_second(client):
    assert (await client.get("/")).status_code == 200


@pytest.mark.asyncio
async def test_third(client):
    assert (await client.get("/")).status_code == 200
