"""LG108, the bug: a module-level httpx.AsyncClient shared by tests that each run on a new loop."""

import os

import httpx
import pytest

client = httpx.AsyncClient(base_url=os.environ["HTTP_URL"])


@pytest.mark.asyncio
async def test_first():
    assert (await client.get("/")).status_code == 200


@pytest.mark.asyncio
async def test_second():
    assert (await client.get("/")).status_code == 200


@pytest.mark.asyncio
async def test_third():
    assert (await client.get("/")).status_code == 200
