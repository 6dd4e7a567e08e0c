"""LG107, the bug: a library's own loop-bound client, kept in a module global, is used by
several asyncio.run() jobs.  The client registers itself with loopguard.track() and calls
loopguard.check() before each use, as any library can."""

import asyncio
import os
from urllib.parse import parse_qs, urlsplit

import loopguard

# PostgreSQL's SSLRequest: the server answers one byte, b"S" or b"N".
SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


class PingClient:
    """Keeps one connection to the server open and reuses it, like most clients do."""

    def __init__(self, url: str) -> None:
        query = parse_qs(urlsplit(url).query)
        self.path = f"{query['host'][0]}/.s.PGSQL.{query.get('port', ['5432'])[0]}"
        self.streams: "tuple[asyncio.StreamReader, asyncio.StreamWriter] | None" = None
        loopguard.track(self, name="ping client")  # where it was created

    async def ping(self) -> str:
        loopguard.check(self)  # before any I/O: the connection belongs to one loop
        if self.streams is None:
            self.streams = await asyncio.open_unix_connection(self.path)
        reader, writer = self.streams
        writer.write(SSL_REQUEST)
        return (await reader.readexactly(1)).decode()


client = PingClient(os.environ["DATABASE_URL"])


async def job(number: int) -> None:
    print(f"job {number}:", await client.ping())


if __name__ == "__main__":
    for number in (1, 2, 3):
        asyncio.run(job(number))  # every asyncio.run() creates a new event loop
