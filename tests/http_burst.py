"""Load for the overload tests, on raw asyncio sockets: a burst of concurrent requests, open-loop probes.

``python tests/http_burst.py PORT N [TEXTS WORDS]`` sends N ``POST /classify`` requests (of TEXTS
texts of WORDS words) at once, each on a connection of its own opened beforehand, and prints one
JSON line: the window it ran in (wall-clock seconds), the status counts,
and how many 503s lacked ``Retry-After`` or a JSON ``error``. It runs in a process of its own so
that its CPU use does not delay the probes the test takes meanwhile (:func:`probe_healthz`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import sys
import time

HOST = "127.0.0.1"


async def exchange(port: int, request: bytes, timeout_s: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (``Connection: close``): (status, headers, body)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (keep-alive): (status, headers, body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head[1:] if ": " in line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(head[0].split()[1]), headers, body


async def burst(port: int, n: int, texts: int = 1, words: int = 5) -> dict:
    """N concurrent requests of `texts` texts of `words` words on N connections opened beforehand (as
    keep-alive clients hold them), all sent at once; what came back, and the window from the first
    send to the last answer."""
    statuses: collections.Counter = collections.Counter()
    bad_503: list[str] = []
    connections = await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(n)))
    await asyncio.sleep(0.5)  # the server has accepted them all before the burst begins

    async def one(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        review = " ".join(f"scene {i} was quite fine" for _ in range(max(1, words // 5)))
        body = json.dumps({"texts": [f"{j}: {review}" for j in range(texts)]}).encode()
        writer.write(b"POST /classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        status, headers, body = await asyncio.wait_for(read_response(reader), 60)
        statuses[status] += 1
        if status == 503:
            try:
                error = json.loads(body)["error"]
            except (ValueError, KeyError):
                error = ""
            if not headers.get("retry-after", "").isdigit() or not error:
                bad_503.append(f"{headers} {body[:200]!r}")

    started = time.time()
    await asyncio.gather(*(one(i, r, w) for i, (r, w) in enumerate(connections)))
    ended = time.time()
    for _, writer in connections:
        writer.close()
    return {"start": started, "end": ended, "statuses": {str(k): v for k, v in statuses.items()},
            "bad_503": bad_503[:5]}


async def probe_healthz(port: int, until: asyncio.Future, every_s: float = 0.01) -> list[tuple[float, float]]:
    """``GET /healthz`` every `every_s` on fresh connections, without waiting for answers (open loop),
    until `until` is done: (wall-clock start, milliseconds) per probe."""
    out: list[tuple[float, float]] = []

    async def one() -> None:
        started, t = time.time(), time.perf_counter()
        status, _, _ = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        assert status == 200, status
        out.append((started, (time.perf_counter() - t) * 1000.0))

    tasks = []
    while not until.done():
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(every_s)
    await asyncio.gather(*tasks)
    return out


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    print(json.dumps(asyncio.run(burst(*(int(arg) for arg in sys.argv[1:5])))))
