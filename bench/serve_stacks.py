"""Where the service's overhead goes: one request through each web stack, in-process, no model.

A stub predictor (zero model cost) sits behind: the bare Starlette route, that route mounted in
the BentoML service as ``bort serve`` runs it (with and without OpenTelemetry spans), and a
plain ``@bentoml.api`` method doing the same work. Requests are driven through each ASGI app
directly (no sockets), so the figures are the framework's own cost per request.

Each stack runs in a fresh process (two BentoML apps in one process would register the same
Prometheus metrics); :func:`framework_overhead` alternates them. Used by ``serve_overhead.py``;
``python bench/serve_stacks.py STACK FOLDER N`` prints one stack's times as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEQ_LEN = 128


class StubPredictor:
    """The predictor's interface at zero model cost: isolates what the web stack costs."""

    is_pair, name, max_seq_len, labels = False, "stub", SEQ_LEN, ["negative", "positive"]
    serving = {"precision": "int8"}  # as the service runs int8 models: no cross-request batching

    def predict(self, texts=None, pairs=None, timings=None) -> list[dict]:
        if timings is not None:
            timings.update(tokenize=0.0, model=0.0)
        return [{"label": "positive", "score": 0.9, "scores": {"negative": 0.1, "positive": 0.9},
                 "truncated": False} for _ in texts]


async def _asgi_post(app, body: bytes) -> int:
    """One in-process POST /classify through an ASGI app (no sockets); returns the status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/classify", "raw_path": b"/classify", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 3000),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


STACKS = ("starlette route alone", "route mounted in BentoML (ours)",
          "route mounted in BentoML, OpenTelemetry spans on", "@bentoml.api method")


def stack_times(stack: str, folder: Path, n: int) -> list[float]:
    """ms per in-process request through one web stack with a stub model (one stack per process:
    two BentoML apps in one process would register the same Prometheus metrics)."""
    import asyncio

    import bentoml

    os.environ["BORT_SERVE_MODEL_DIR"] = str(folder)
    from bort.config import ServeConfig
    from serve import service
    from serve.app import Engine, build_app

    @bentoml.service(name="api-compare", logging={"access": {"enabled": False}})
    class ApiClassifier:
        @bentoml.api
        def classify(self, texts: list[str]) -> dict:
            return {"results": StubPredictor().predict(texts=texts), "model": "stub", "truncated_to_tokens": 128}

    if stack == STACKS[0]:
        app = build_app()
        app.state.engine = Engine(StubPredictor(), ServeConfig())
    else:
        app = ApiClassifier.to_asgi() if stack == STACKS[3] else service.Classifier.to_asgi()
    body = json.dumps({"texts": ["a short review"]}).encode()

    async def run() -> list[float]:
        started = asyncio.Event()
        events = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict:
            event = next(events, None)
            if event is None:
                await asyncio.Event().wait()
            return event

        async def send(message: dict) -> None:
            if message["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"{stack}: the app did not start: {message}")
            started.set()

        # Keep the task referenced: a collected lifespan task shuts the service down mid-run.
        lifespan = asyncio.get_running_loop().create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
        await started.wait()
        if stack in STACKS[1:3]:
            service.http_app.state.engine.predictor = StubPredictor()
        times = []
        for _ in range(n + 100):
            start = time.perf_counter()
            status = await _asgi_post(app, body)
            assert status == 200, status
            times.append((time.perf_counter() - start) * 1000.0)
        lifespan.cancel()
        return times[100:]

    return asyncio.run(run())


def framework_overhead(folder: Path, n: int, rounds: int) -> dict:
    """p50 ms per request of each stack; stacks alternate across `rounds` fresh processes."""

    times: dict[str, list[float]] = {stack: [] for stack in STACKS}
    for _ in range(rounds):
        for stack in STACKS:
            env = {**os.environ, "BORT_SERVE_TRACE": "1" if stack == STACKS[2] else "0"}
            out = subprocess.run([sys.executable, __file__, stack, str(folder), str(n)], capture_output=True,
                                 text=True, timeout=300, check=True, env=env)
            times[stack] += json.loads(out.stdout.strip().splitlines()[-1])
    return {stack: round(float(np.percentile(t, 50)), 3) for stack, t in times.items()}


if __name__ == "__main__":
    import logging

    sys.path.insert(0, str(ROOT))
    logging.disable(logging.WARNING)
    print(json.dumps(stack_times(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
