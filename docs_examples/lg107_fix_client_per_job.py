"""LG107, fix: each asyncio.run() job creates its own client and closes it before returning."""

import asyncio
import os
from urllib.parse import parse_qs, urlsplit

import loopguard

SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


class PingClient:
    def __init__(self, url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        self.path = f"{query['host'][0]}/.s.PGSQL.{query.get('port', ['5432'])[0]}"
        self.streams: "tuple[asyncio.StreamReader, asyncio.StreamWriter] | None" = None
        loopguard.track(self, name="ping client")

    async def ping(self) -> str:
        loopguard.check(self)
        if self.streams is None:
            self.streams = await asyncio.open_unix_connection(self.path)
        reader, writer = self.streams
        writer.write(SSL_REQUEST)
        return (await reader.readexactly(1)).decode()

    async def __aenter__(self) -> "PingClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.streams is not None:
            self.streams[1].close()
            await self.streams[1].wait_closed()


async def job(number: int) -> None:
    async with PingClient(os.environ["DATABASE_URL"]) as client:  # one client per loop
        print(f"job {number}:", await client.ping())


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
