"""The cause tables as ``loopguard report`` reads them (kept until the report reads ``_causes``)."""

from __future__ import annotations

from ._causes import ASYNCPG_CONNECTION, ASYNCPG_POOL, ENGINE

CAUSES = {key: tuple(cause) for key, cause in ENGINE.items()}
ASYNCPG_CAUSES = {
    **{("pool", key): tuple(cause) for key, cause in ASYNCPG_POOL.items()},
    **{("connection", key): tuple(cause) for key, cause in ASYNCPG_CONNECTION.items()},
}
