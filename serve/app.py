"""The ``POST /classify`` route as a plain Starlette app, mounted inside the BentoML service.

Why not a ``@bentoml.api`` method: measured here (``bench/serve_stacks.py``, stub model,
in-process), BentoML's IO-descriptor path (pydantic validation, a JSON schema rebuilt for every
response, its dispatcher) costs ~1.9 ms a request against ~0.35 ms for this route mounted in
the same service (~0.12 ms bare); for a model whose int8 latency is a few ms that overhead is
a large part of the latency. Its validation errors are also not all 4xx JSON
(an error body comes back as a list, malformed bodies can 500). BentoML still provides the
server, workers, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus, counting this route too),
the access log, and the Bento.

Batching is "natural": requests that arrive while the model is busy are merged into the next
model call (up to ``max_batch_texts``); nothing ever waits for a batch to fill. A lone small
request with the model idle skips the queue and the thread: it runs on the event loop, after one
turn of the loop that lets requests arriving with it join a merged call instead.

``batching="auto"`` merges for fp32 models only: dynamic int8 quantises activations with one
scale per batch, so an int8 answer depends on which other texts (and how much padding) share its
batch; measured on a fine-tuned MiniLM, 7 of 256 dev labels changed between batch 1 and batch 64.
Cross-request merging would make an answer depend on other clients' traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bort.config import ServeConfig
from serve.predictor import Predictor
from serve.validation import (
    RequestError,
    check_api_key,
    check_content_type,
    check_declared_length,
    parse_body,
)

log = logging.getLogger(__name__)


class Engine:
    """A predictor behind a natural batcher; one model call at a time, off the event loop."""

    def __init__(self, predictor: Predictor, settings: ServeConfig) -> None:
        self.predictor = predictor
        self.settings = settings
        self.api_key = settings.api_key()
        precision = predictor.serving.get("precision", "fp32")
        self.batching = settings.batching == "always" or (settings.batching == "auto" and precision == "fp32")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bort-infer")
        self._in_thread = 0  # model calls submitted to the thread and not yet finished
        self._pending: deque[tuple[list[Any], asyncio.Future, dict[str, float] | None]] = deque()
        self._drainer: asyncio.Task | None = None  # referenced: the loop holds tasks only weakly

    async def classify(self, items: list[Any], timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Results for ``items`` (texts, or pairs for pair models), in order. ``timings``, when
        given, receives the tokenise and model milliseconds of the model call that served them
        (shared with the requests merged into it)."""
        loop = asyncio.get_running_loop()
        if not self.batching:
            if len(items) <= self.settings.inline_max_texts and not self._in_thread:
                # A small call with no other model call running: on the loop itself, which saves
                # two thread hand-offs (~0.1-0.2 ms here). Other /classify requests would wait for
                # it anyway (one model call at a time); /healthz and /metrics wait too, hence small.
                return self._predict(items, timings)
            return await self._in_model_thread(items, timings)
        future = loop.create_future()
        entry = (items, future, timings)
        self._pending.append(entry)
        if self._drainer is None or self._drainer.done():
            if (len(items) <= self.settings.inline_max_texts and len(self._pending) == 1
                    and not self._in_thread):
                # Alone, and the model idle: give requests that arrived with this one one turn
                # of the loop to join the queue; still alone, run on the loop itself.
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:  # the client went away: leave nothing queued for it
                    with contextlib.suppress(ValueError):  # already taken by a drainer
                        self._pending.remove(entry)
                    raise
                if (len(self._pending) == 1 and self._pending[0] is entry and not self._in_thread
                        and (self._drainer is None or self._drainer.done())):
                    self._pending.popleft()
                    return self._predict(items, timings)
            if self._drainer is None or self._drainer.done():
                self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Run model calls until no request is waiting; each call takes every waiting request
        that fits in ``max_batch_texts`` (at least one)."""
        limit = self.settings.max_batch_texts
        while self._pending:
            group, size = [], 0
            while self._pending and (not group or size + len(self._pending[0][0]) <= limit):
                group.append(self._pending.popleft())
                size += len(group[-1][0])
            merged = [item for items, _, _ in group for item in items]
            shared: dict[str, float] = {}
            try:
                results = await self._in_model_thread(merged, shared)
            except Exception as e:  # noqa: BLE001 - every waiting request must get an answer
                for _, future, _ in group:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for items, future, timings in group:
                if timings is not None:
                    timings.update(shared)
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)

    async def _in_model_thread(self, items: list[Any], timings: dict[str, float] | None) -> list[dict[str, Any]]:
        self._in_thread += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, items, timings)
        finally:
            self._in_thread -= 1

    def _predict(self, items: list[Any], timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
        if self.predictor.is_pair:
            return self.predictor.predict(pairs=items, timings=timings)
        return self.predictor.predict(texts=items, timings=timings)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it grows past ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def classify(request: Request) -> JSONResponse:
    """``POST /classify``: ``{"texts": [...]}`` (or ``{"pairs": [[a, b], ...]}``) -> results."""
    started = time.perf_counter()
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        return error(503, "the model is not loaded yet; retry when /readyz answers 200")
    settings, headers = engine.settings, request.headers
    try:
        check_api_key(engine.api_key, headers.get("x-api-key"))
        check_declared_length(headers.get("content-length"), settings.max_body_bytes)
        check_content_type(headers.get("content-type"))
        body = await read_body(request, settings.max_body_bytes)
        items = parse_body(body, settings, engine.predictor.is_pair)
    except RequestError as e:
        return error(e.status, e.message)
    timings: dict[str, float] | None = {} if settings.server_timing else None
    try:
        results = await engine.classify(items, timings)
    except Exception:  # noqa: BLE001 - answer JSON, keep the traceback in the server log
        log.exception("classification failed")
        return error(500, "internal error while classifying; see the server log")
    headers = None
    if timings is not None:
        timings["app"] = (time.perf_counter() - started) * 1000.0
        headers = {"Server-Timing": server_timing(timings)}
    return JSONResponse({"results": results, "model": engine.predictor.name,
                         "truncated_to_tokens": engine.predictor.max_seq_len}, headers=headers)


def server_timing(timings: dict[str, float]) -> str:
    """A ``Server-Timing`` header (W3C): ``tokenize`` and ``model`` for the model call that
    answered, ``app`` from the route's first line to its answer (validation and queueing too)."""
    return ", ".join(f"{name};dur={ms:.3f}" for name, ms in timings.items())


class JSONErrors:
    """Raw ASGI middleware: a 4xx/5xx answer that is not JSON (BentoML's 404, a 405, a timeout)
    is rewritten as ``{"error": "..."}`` with the same status. Other answers pass untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {}

        async def rewrite(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400 and not any(
                    k.lower() == b"content-type" and b"json" in v for k, v in message.get("headers", [])):
                held["start"], held["body"] = message, b""
                return
            if "start" not in held:
                return await send(message)
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            start = held.pop("start")
            detail = held["body"].decode("utf-8", "replace").strip() or HTTPStatus(start["status"]).phrase
            body = json.dumps({"error": f"{detail}: {scope['method']} {scope['path']}; "
                                        "use POST /classify, GET /healthz, /readyz or /metrics"}).encode()
            headers = [(k, v) for k, v in start.get("headers", [])
                       if k.lower() not in (b"content-type", b"content-length")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def build_app() -> Starlette:
    """The ASGI app; the service sets ``app.state.engine`` once the model is loaded."""
    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    app.state.engine = None
    return app
