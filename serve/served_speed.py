"""Served throughput of exported folders, side by side: what "faster under load" means for ``bort export``.

For a small model the model call is the smaller part of a request: HTTP, JSON and the event loop
take most of it, and how the service runs the model decides throughput. A merged variant (fp32,
static int8) runs one call per batch in the model thread while the loop parses the next requests;
dynamic int8 is never merged, so each request is a call of its own, mostly on the loop itself.
Timing the model alone cannot see that, so ``bort export`` (``export.speed_under_load=served``)
serves each variant with the service's own code and settings on 127.0.0.1 and drives it with
``users`` closed-loop clients (keep-alive sockets, one dev text per request) for ``seconds``,
variants interleaved over ``rounds`` rounds (order rotated); the figure is the median requests/s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bort.config import ServeConfig

log = logging.getLogger(__name__)
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


async def _client(host: str, port: int, bodies: list[bytes], stop_at: float, seed: int, counts: list[int]) -> None:
    """One closed-loop user: POST a body, read the answer by its Content-Length, repeat until `stop_at`."""
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: "
    rng = np.random.default_rng(seed)
    try:
        while time.monotonic() < stop_at:
            body = bodies[int(rng.integers(len(bodies)))]
            writer.write(f"{head}{len(body)}\r\n\r\n".encode() + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(answer)
            await reader.readexactly(int(length.group(1)) if length else 0)
            if not answer.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the service answered {answer[:40]!r}")
            counts[0] += 1
    finally:
        writer.close()


async def _drive(host: str, port: int, bodies: list[bytes], users: int, seconds: float, warmup_s: float) -> float:
    """Requests/s over `seconds` after `warmup_s`, `users` clients at once."""
    counts = [0]
    start = time.monotonic()
    tasks = [asyncio.create_task(_client(host, port, bodies, start + warmup_s + seconds, i, counts))
             for i in range(users)]
    await asyncio.sleep(warmup_s)
    before, measured_from = counts[0], time.monotonic()
    await asyncio.gather(*tasks)
    return (counts[0] - before) / (time.monotonic() - measured_from)


def measure(folders: dict[str, Path], serve_cfg: ServeConfig, texts: list[Any], *, users: int = 8,
            seconds: float = 3.0, rounds: int = 2, warmup_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """Served requests/s of each folder at `users` concurrent clients, interleaved over `rounds`.

    Args:
        folders: ``{precision: exported folder}``.
        serve_cfg: the service's settings (threads, batching, ...); the port is picked free.
        texts: request items (texts, or ``[a, b]`` pairs for a pair task), one per request.

    Returns:
        ``{precision: {"served_rps": median, "served_rps_rounds": [...], "users": users}}``.
    """
    from serve.server import ServerProcess

    key = "pairs" if texts and not isinstance(texts[0], str) else "texts"
    bodies = [json.dumps({key: [t]}).encode() for t in texts]
    cfg = serve_cfg.model_copy(update={"host": "127.0.0.1", "port": 0})
    rps: dict[str, list[float]] = {p: [] for p in folders}
    order = list(folders)
    with tempfile.TemporaryDirectory(prefix="bort-served-speed-") as logs:
        for r in range(rounds):
            for precision in order[r % len(order):] + order[:r % len(order)]:
                with ServerProcess(folders[precision], cfg, log_path=Path(logs) / f"{precision}.log") as server:
                    rps[precision].append(asyncio.run(_drive(server.host, server.port, bodies, users, seconds,
                                                             warmup_s)))
                log.info("served %s, %d users: %.1f requests/s", precision, users, rps[precision][-1])
    return {p: {"served_rps": round(float(np.median(v)), 1), "served_rps_rounds": [round(x, 1) for x in v],
                "users": users} for p, v in rps.items()}
