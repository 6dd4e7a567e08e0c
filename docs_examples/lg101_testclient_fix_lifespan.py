"""LG101, fix: `with TestClient(app)`, and the engine created and disposed in the lifespan."""

import contextlib
import os

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.engine = create_async_engine(os.environ["DATABASE_URL"])
    yield
    await app.state.engine.dispose()  # on the loop that used it, before it ends


async def count(request):
    async with request.app.state.engine.connect() as conn:
        return JSONResponse({"count": await conn.scalar(text("select 1"))})


app = Starlette(routes=[Route("/count", count)], lifespan=lifespan)


def test_count_twice():
    with TestClient(app) as client:  # one loop for the block, the lifespan's too
        assert client.get("/count").json() == {"count": 1}
        assert client.get("/count").json() == {"count": 1}


def test_count_again():
    with TestClient(app) as client:
        assert client.get("/count").json() == {"count": 1}
