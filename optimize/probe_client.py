"""The served-latency probe's client: one request at a time through Locust's ``FastHttpSession``.

Locust's ``FastHttpUser``, the load test's default client, sends through this session, so the fixed
cost the search adds to every candidate is what Locust measures beside the model. Importing Locust
monkey-patches the standard library for gevent, so this runs in a process of its own
(:func:`optimize.served.measure_fixed_cost` starts it), never in the stage's.

    python -m optimize.probe_client URL TEXTS_JSON WARMUP   # prints {"client_ms": [...], "model_ms": [...]}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def server_timing(header: str) -> dict[str, float]:
    """``"tokenize;dur=0.18, model;dur=9.4"`` -> ``{"tokenize": 0.18, "model": 9.4}`` (ms)."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:])
    return out


def time_requests(url: str, texts: list[str], warmup: int) -> tuple[list[float], list[float]]:
    """Client and model milliseconds of each request after `warmup` unmeasured ones."""
    from locust.contrib.fasthttp import FastHttpSession
    from locust.event import EventHook

    client, model = [], []
    session = FastHttpSession(url, request_event=EventHook(), user=None)
    for i, text in enumerate((texts * 2)[:warmup] + texts):
        start = time.perf_counter()
        resp = session.post("/classify", json={"texts": [text]}, name="/classify")
        elapsed = (time.perf_counter() - start) * 1000.0
        if resp.status_code != 200:
            raise SystemExit(f"the probe service answered {resp.status_code}: {(resp.text or '')[:200]}")
        if i >= warmup:
            client.append(elapsed)
            model.append(server_timing(resp.headers.get("server-timing", ""))["model"])
    return client, model


def main(argv: list[str]) -> int:
    url, texts_file, warmup = argv[0], Path(argv[1]), int(argv[2])
    client, model = time_requests(url, json.loads(texts_file.read_text(encoding="utf-8")), warmup)
    print(json.dumps({"client_ms": client, "model_ms": model}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
