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

``batching="auto"`` merges for models whose answers do not depend on the batch: fp32 and static
int8 (fixed, calibrated activation scales). Dynamic int8 quantises activations with one scale per
batch, so its answer depends on which other texts (and how much padding) share its batch; measured
on a fine-tuned MiniLM, 7 of 256 dev labels changed between batch 1 and batch 64. Cross-request
merging would make an answer depend on other clients' traffic, so dynamic int8 is never merged.

Overload. Requests wait for the model in one bounded queue, counted in texts (``serve.max_queue``:
a 64-text request weighs what it costs; a text counts until the model call that serves it
returns): a request that would overfill it is answered 503 at once, with ``Retry-After`` (the
queued texts times the recent model seconds per text) and a JSON body; while the queue is full,
:class:`ShedWhenFull` does so before BentoML's middlewares run. A waiting request leaves the queue
uncomputed when its client disconnects or ``serve.request_timeout_s`` after it arrived (503).
``/readyz`` answers 503 while the queue is full or a model call has run longer than
``serve.request_timeout_s`` (:meth:`Engine.not_ready`). A body that does not arrive within
``serve.read_timeout_s`` (a Content-Length longer than what is sent, a chunked body never
finished) is answered 408 and its connection closed.

What this adds to a request (the queue's bookkeeping, the read timeout, the deadline, the layers
for shedding, metric labels and the OpenAPI schema), measured with ``bench/serve_stacks.py`` (stub
model, in-process, p50 of 3 interleaved rounds of 2,000 requests against the code before it, on
this 2-core Intel Xeon VM shared with other jobs): the route alone 0.029 -> 0.041 ms, the route
mounted in BentoML as ``bort serve`` runs it 0.109 -> 0.120 ms: ~0.012 ms a request. The schema
itself costs nothing per request: ``/classify`` stays this plain route and its description is
added to ``/docs.json`` (:mod:`serve.openapi`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bort.config import ServeConfig
from serve.metrics import NoMeters
from serve.predictor import Predictor, batch_invariant
from serve.validation import (
    RequestError,
    check_api_key,
    check_content_type,
    check_declared_length,
    parse_body,
)

log = logging.getLogger(__name__)

WAITING, TAKEN, DROPPED = "waiting", "taken", "dropped"


class Shed(Exception):
    """A request answered 503 without being computed: why, and when to retry (seconds)."""

    def __init__(self, reason: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason, self.message, self.retry_after_s = reason, message, retry_after_s


@dataclass(eq=False)
class Waiting:
    """A request in the queue: its inputs, the future its answer goes to, its deadline (loop time)."""

    items: list[Any]
    future: asyncio.Future
    timings: dict[str, float] | None
    deadline: float
    state: str = WAITING


class Engine:
    """A predictor behind a bounded, natural batcher; one model call at a time, off the event loop."""

    def __init__(self, predictor: Predictor, settings: ServeConfig, meters: NoMeters | None = None) -> None:
        self.predictor = predictor
        self.settings = settings
        self.api_key = settings.api_key()
        self.batching = settings.batching == "always" or (settings.batching == "auto" and batch_invariant(predictor.serving))
        self.meters = meters or NoMeters()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bort-infer")
        self._in_thread = 0  # model calls submitted to the thread and not yet finished
        self._pending: deque[Waiting] = deque()
        self._drainer: asyncio.Task | None = None  # referenced: the loop holds tasks only weakly
        self.queued_texts = 0  # texts waiting for the model or in its current call: what max_queue bounds
        self._call_started: float | None = None  # perf_counter() when the running model call began
        self._s_per_text = 0.005  # recent model seconds per text (moving average): Retry-After's estimate

    async def classify(self, items: list[Any], timings: dict[str, float] | None = None,
                       deadline: float | None = None,
                       gone: Callable[[], Awaitable[Any]] | None = None) -> list[dict[str, Any]]:
        """Results for ``items`` (texts, or pairs for pair models), in order.

        Args:
            items: the request's inputs.
            timings: receives the tokenise and model milliseconds of the model call that served
                them (shared with the requests merged into it).
            deadline: loop time after which the request is answered 503 uncomputed (default:
                ``serve.request_timeout_s`` from now).
            gone: returns once the client has disconnected; a queued request then leaves the queue.

        Raises:
            Shed: the queue is full, the deadline passed, or the client went away (answer 503).
        """
        loop = asyncio.get_running_loop()
        idle = not self._in_thread and not self._pending and (self._drainer is None or self._drainer.done())
        if len(items) <= self.settings.inline_max_texts and idle and not self.batching:
            # A small call with the model idle: on the loop itself, which saves two thread hand-offs
            # (~0.1-0.2 ms here). Other requests would wait for it anyway (one model call at a time);
            # /healthz and /metrics wait too, hence small.
            return self._predict(items, timings)
        entry = self._admit(items, timings, loop.time() + self.settings.request_timeout_s
                            if deadline is None else deadline)
        if len(items) <= self.settings.inline_max_texts and idle:
            # Merging: give requests that arrived with this one one turn of the loop to join it;
            # still alone, and the model idle, run on the loop itself.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:  # the client went away: leave nothing queued for it
                self._drop(entry, None)
                raise
            if (len(self._pending) == 1 and self._pending[0] is entry and not self._in_thread
                    and (self._drainer is None or self._drainer.done())):
                self._take(self._pending.popleft())
                try:
                    return self._predict(items, timings)
                finally:
                    self._release([entry])
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return await self._wait(entry, gone)

    def _admit(self, items: list[Any], timings: dict[str, float] | None, deadline: float) -> Waiting:
        """Queue a request, or shed it (:class:`Shed`) when its texts would overfill the queue."""
        limit = self.settings.max_queue
        if self.queued_texts + len(items) > limit:
            self.meters.shed("queue_full")
            retry = self.retry_after_s()
            raise Shed("queue_full", f"the service is at capacity: {self.queued_texts} texts wait for the "
                                     f"model (serve.max_queue {limit}); retry in {retry} s", retry)
        entry = Waiting(items, asyncio.get_running_loop().create_future(), timings, deadline)
        self._pending.append(entry)
        self.queued_texts += len(items)
        self.meters.queue_depth(self.queued_texts)
        return entry

    def _take(self, entry: Waiting) -> None:
        entry.state = TAKEN  # still counted in queued_texts until its model call returns

    def _release(self, group: list[Waiting]) -> None:
        self.queued_texts -= sum(len(entry.items) for entry in group)
        self.meters.queue_depth(self.queued_texts)

    def _drop(self, entry: Waiting, reason: str | None) -> bool:
        """Take a still-waiting request off the queue, uncomputed; answer it :class:`Shed` when
        ``reason`` is given (None: its handler is gone). False when it was no longer waiting."""
        if entry.state != WAITING:
            return False
        entry.state = DROPPED
        self.queued_texts -= len(entry.items)
        self.meters.queue_depth(self.queued_texts)
        try:
            self._pending.remove(entry)  # O(queue), and the queue is bounded
        except ValueError:
            pass
        if reason is not None:
            self.meters.shed(reason)
            if not entry.future.done():
                entry.future.set_exception(Shed(reason, self._shed_message(reason), self.retry_after_s()))
        return True

    def _shed_message(self, reason: str) -> str:
        if reason == "deadline":
            return (f"not computed: waited longer than serve.request_timeout_s ({self.settings.request_timeout_s:g} s) "
                    f"for the model; retry in {self.retry_after_s()} s")
        return "not computed: the client disconnected"

    async def _wait(self, entry: Waiting, gone: Callable[[], Awaitable[Any]] | None) -> list[dict[str, Any]]:
        """The queued request's answer, or :class:`Shed` at its deadline or when its client goes."""
        watcher = None
        if gone is not None:
            watcher = asyncio.get_running_loop().create_task(gone())
            watcher.add_done_callback(lambda task: self._client_gone(entry, task))
        try:
            async with asyncio.timeout_at(entry.deadline):
                return await entry.future
        except TimeoutError:
            if self._drop(entry, "deadline"):
                raise Shed("deadline", self._shed_message("deadline"), self.retry_after_s()) from None
            raise Shed("deadline", f"its model call ran past serve.request_timeout_s "
                                   f"({self.settings.request_timeout_s:g} s); retry in {self.retry_after_s()} s",
                       self.retry_after_s()) from None
        except asyncio.CancelledError:  # BentoML's own timeout, or the server stopping
            self._drop(entry, None)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    def _client_gone(self, entry: Waiting, watcher: asyncio.Task) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            self._drop(entry, "client_gone")

    def _next_group(self, now: float) -> list[Waiting]:
        """The waiting requests the next model call serves: every one that fits in
        ``max_batch_texts`` when merging (at least one), else one; those past their deadline are
        dropped on the way."""
        group: list[Waiting] = []
        size = 0
        while self._pending:
            entry = self._pending[0]
            if entry.deadline <= now:
                self._drop(entry, "deadline")
                continue
            if group and (not self.batching or size + len(entry.items) > self.settings.max_batch_texts):
                break
            self._take(self._pending.popleft())
            group.append(entry)
            size += len(entry.items)
        return group

    async def _drain(self) -> None:
        """Run model calls until no request is waiting."""
        loop = asyncio.get_running_loop()
        while self._pending:
            group = self._next_group(loop.time())
            if not group:
                continue
            merged = [item for entry in group for item in entry.items]
            shared: dict[str, float] = {}
            try:
                results = await self._in_model_thread(merged, shared)
            except Exception as e:  # noqa: BLE001 - every waiting request must get an answer
                for entry in group:
                    if not entry.future.done():
                        entry.future.set_exception(e)
                continue
            finally:
                self._release(group)
            start = 0
            for entry in group:
                if entry.timings is not None:
                    entry.timings.update(shared)
                if not entry.future.done():
                    entry.future.set_result(results[start:start + len(entry.items)])
                start += len(entry.items)

    async def _in_model_thread(self, items: list[Any], timings: dict[str, float] | None) -> list[dict[str, Any]]:
        self._in_thread += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, items, timings)
        finally:
            self._in_thread -= 1

    def _predict(self, items: list[Any], timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
        started = self._call_started = time.perf_counter()  # a float store: safe to read from the loop
        try:
            if self.predictor.is_pair:
                results = self.predictor.predict(pairs=items, timings=timings)
            else:
                results = self.predictor.predict(texts=items, timings=timings)
        finally:
            self._call_started = None
        self._s_per_text += 0.2 * ((time.perf_counter() - started) / len(items) - self._s_per_text)
        self.meters.model_call(len(items), sum(1 for r in results if r.get("truncated")))
        return results

    def retry_after_s(self) -> int:
        """Whole seconds until the texts now queued should have been served (at least 1)."""
        return max(1, math.ceil(self.queued_texts * self._s_per_text))

    def not_ready(self) -> str | None:
        """Why ``/readyz`` should answer 503 now (queue full, model call stuck), or None."""
        if self.queued_texts >= self.settings.max_queue:
            return (f"not ready: the queue is full ({self.queued_texts} texts wait for the model, "
                    f"serve.max_queue {self.settings.max_queue})")
        started = self._call_started
        if started is not None and time.perf_counter() - started > self.settings.request_timeout_s:
            return (f"not ready: a model call has run for {time.perf_counter() - started:.0f} s, longer than "
                    f"serve.request_timeout_s ({self.settings.request_timeout_s:g} s); the model thread is stuck")
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing as soon as it grows past ``limit`` bytes (413) or when it has not
    all arrived within ``timeout_s`` (408, and the connection is closed: its framing is unknown)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s (serve.read_timeout_s; "
                                f"{size} bytes came): send the whole body, and a Content-Length that matches it",
                           headers={"Connection": "close"}) from None
    return b"".join(chunks)


async def client_gone(request: Request) -> None:
    """Returns when the client disconnects. Only once the body is read: the next ASGI message is then
    ``http.disconnect`` (sent on a disconnect, or after the answer, and the answer cancels this first)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def classify(request: Request) -> JSONResponse:
    """``POST /classify``: ``{"texts": [...]}`` (or ``{"pairs": [[a, b], ...]}``) -> results."""
    started = time.perf_counter()
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        return error(503, "the model is not loaded yet; retry when /readyz answers 200", {"Retry-After": "1"})
    settings, headers = engine.settings, request.headers
    deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
    try:
        check_api_key(engine.api_key, headers.get("x-api-key"))
        check_declared_length(headers.get("content-length"), settings.max_body_bytes)
        check_content_type(headers.get("content-type"))
        body = await read_body(request, settings.max_body_bytes, settings.read_timeout_s)
        items = parse_body(body, settings, engine.predictor.is_pair)
    except RequestError as e:
        return error(e.status, e.message, e.headers)
    timings: dict[str, float] | None = {} if settings.server_timing else None
    try:
        results = await engine.classify(items, timings, deadline, lambda: client_gone(request))
    except Shed as e:
        return error(503, e.message, {"Retry-After": str(e.retry_after_s)})
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


class ShedWhenFull:
    """Raw ASGI middleware, outermost: while the queue is full, ``POST /classify`` is answered 503
    before BentoML's middlewares, the router or the body cost anything (~0.4 ms a request through
    them, which a burst of a thousand requests turns into seconds of a busy event loop, /healthz
    waiting behind it). Those requests are counted in ``bort_requests_shed_total``, not in BentoML's
    request metrics. ``state.engine`` is the app's :class:`Engine` once the model is loaded."""

    def __init__(self, app: Any, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        engine = self.state.engine if scope["type"] == "http" and scope["path"] == "/classify" else None
        if engine is None or engine.queued_texts < engine.settings.max_queue:
            return await self.app(scope, receive, send)
        engine.meters.shed("queue_full")
        retry = engine.retry_after_s()
        body = json.dumps({"error": f"the service is at capacity: {engine.queued_texts} texts wait for the model "
                                    f"(serve.max_queue {engine.settings.max_queue}); retry in {retry} s"}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry).encode())]})
        await send({"type": "http.response.body", "body": body})


class JSONErrors:
    """Raw ASGI middleware: a 4xx/5xx answer that is not JSON (BentoML's 404, a 405, a timeout,
    ``/readyz``'s 503) is rewritten as ``{"error": "..."}`` with the same status; ``why_not_ready()``
    gives ``/readyz``'s reason. Other answers pass untouched."""

    def __init__(self, app: Any, why_not_ready: Callable[[], str | None] | None = None) -> None:
        self.app = app
        self.why_not_ready = why_not_ready

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
            await send_error(start, self._message(scope, start["status"], held["body"]))

        async def send_error(start: dict, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            headers = [(k, v) for k, v in start.get("headers", [])
                       if k.lower() not in (b"content-type", b"content-length")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)

    def _message(self, scope: dict, status: int, body: bytes) -> str:
        if scope["path"] == "/readyz" and status == 503 and self.why_not_ready is not None:
            reason = self.why_not_ready()
            if reason:
                return reason
        detail = body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
        return (f"{detail}: {scope['method']} {scope['path']}; "
                "use POST /classify, GET /healthz, /readyz, /metrics or /docs.json")


def build_app() -> Starlette:
    """The ASGI app; the service sets ``app.state.engine`` once the model is loaded."""
    app = Starlette(routes=[Route("/classify", classify, methods=["POST"])])
    app.state.engine = None
    return app
