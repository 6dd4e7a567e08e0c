"""The pattern from countless projects: a cached engine and a module-level sessionmaker."""

import os
from functools import lru_cache

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


@lru_cache
def get_async_engine() -> AsyncEngine:
    url = os.environ["DATABASE_URL"]
    return create_async_engine(url, pool_size=5)


SessionLocal = async_sessionmaker(get_async_engine(), expire_on_commit=False)
