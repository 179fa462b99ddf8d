"""A minimal asyncio HTTP/1.1 webhook receiver for benchmarks, run as its own process.

    python -m bench._receiver PORT

It answers every POST with 204 on a keep-alive connection and keeps each delivery's arrival
time, headers and body; `GET /stats` returns the count, the distinct `webhook-id`s, the
first and last arrival, and (`GET /stats?verify=1`, once the timed part is over: it costs
a lot of CPU) how many of the distinct deliveries carry a valid signature for the secret in
BENCH_WEBHOOK_SECRET. `POST /reset`
forgets everything. Nothing else: as little receiver work as possible, so the sender is
what is measured.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import orjson
import standardwebhooks

NO_CONTENT = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"


class Receiver:
    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[bytes, bytes], bytes]] = []

    def stats(self, verify: bool) -> bytes:
        unique: dict[bytes, tuple[dict[bytes, bytes], bytes]] = {}
        for _at, headers, body in self.arrivals:
            unique.setdefault(headers.get(b"webhook-id", b""), (headers, body))
        secret = os.environ.get("BENCH_WEBHOOK_SECRET")
        valid = 0
        if secret and verify:
            signer = standardwebhooks.Webhook(secret)
            for headers, body in unique.values():
                plain = {k.decode(): v.decode() for k, v in headers.items()}
                try:
                    signer.verify(body, plain)
                    valid += 1
                except standardwebhooks.WebhookVerificationError:
                    pass
        times = [at for at, _h, _b in self.arrivals]
        return orjson.dumps(
            {
                "count": len(self.arrivals),
                "unique": len(unique),
                "valid": valid,
                "first": min(times, default=0.0),
                "last": max(times, default=0.0),
                "body_bytes": max((len(b) for _a, _h, b in self.arrivals), default=0),
            }
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head[:-4].split(b"\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
                method, target = request_line.split(b" ")[:2]
                if method == b"GET" and target.startswith(b"/stats"):
                    out = self.stats(verify=target == b"/stats?verify=1")
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n%s" % (len(out), out)
                    )
                elif target == b"/reset":
                    self.arrivals.clear()
                    writer.write(NO_CONTENT)
                else:
                    self.arrivals.append((time.time(), headers, body))
                    writer.write(NO_CONTENT)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main(port: int) -> None:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
