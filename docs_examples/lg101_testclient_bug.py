"""LG101, the bug: Starlette's TestClient without `with` runs each request on a new loop."""

import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

engine = create_async_engine(os.environ["DATABASE_URL"])  # created at import


async def count(request):
    async with engine.connect() as conn:
        return JSONResponse({"count": await conn.scalar(text("select 1"))})


app = Starlette(routes=[Route("/count", count)])


def test_count_twice():
    client = TestClient(app)
    assert client.get("/count").json() == {"count": 1}
    assert client.get("/count").json() == {"count": 1}


def test_count_again():
    client = TestClient(app)
    assert client.get("/count").json() == {"count": 1}
