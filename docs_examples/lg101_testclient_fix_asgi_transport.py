"""LG101, fix: call the app on the tests' own loop, one session loop for everything."""

import os

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

engine = create_async_engine(os.environ["DATABASE_URL"])


async def count(request):
    async with engine.connect() as conn:
        return JSONResponse({"count": await conn.scalar(text("select 1"))})


app = Starlette(routes=[Route("/count", count)])
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
    await engine.dispose()  # on the session's loop, the one every test used


async def test_count_twice(client):
    assert (await client.get("/count")).json() == {"count": 1}
    assert (await client.get("/count")).json() == {"count": 1}


async def test_count_again(client):
    assert (await client.get("/count")).json() == {"count": 1}
