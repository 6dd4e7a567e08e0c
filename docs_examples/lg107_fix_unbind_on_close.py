"""LG107, fix: a long-lived client closes its connection at the end of each job and says so
with loopguard.unbind(), the analogue of `await engine.dispose()`: the next loop may use it."""

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

    async def aclose(self) -> None:
        if self.streams is not None:
            writer, self.streams = self.streams[1], None
            writer.close()
            await writer.wait_closed()
        loopguard.unbind(self)  # nothing of this loop is left in it


client = PingClient(os.environ["DATABASE_URL"])


async def job(number: int) -> None:
    try:
        print(f"job {number}:", await client.ping())
    finally:
        await client.aclose()


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))
