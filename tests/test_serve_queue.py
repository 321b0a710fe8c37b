"""The engine's bounded queue, in-process with a model that runs only when a test lets it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bort.config import ServeConfig
from serve.app import Engine, JSONErrors, Shed


class GatedPredictor:
    """The predictor's interface; each call waits for `gate` and records the texts it computed."""

    is_pair, name, max_seq_len, labels = False, "gated", 32, ["no", "yes"]

    def __init__(self, precision: str = "fp32") -> None:
        self.serving = {"precision": precision}
        self.gate = threading.Event()
        self.computed: list[str] = []

    def predict(self, texts=None, pairs=None, timings=None) -> list[dict]:
        assert self.gate.wait(10), "the test never opened the gate"
        self.computed += texts
        return [{"label": "yes", "score": 0.6, "scores": {"no": 0.4, "yes": 0.6}, "truncated": len(t) > 20}
                for t in texts]


class Recorder:
    def __init__(self) -> None:
        self.sheds: list[str] = []
        self.depths: list[int] = []
        self.calls: list[tuple[int, int]] = []

    def queue_depth(self, texts: int) -> None:
        self.depths.append(texts)

    def model_call(self, texts: int, truncated: int) -> None:
        self.calls.append((texts, truncated))

    def shed(self, reason: str) -> None:
        self.sheds.append(reason)


def engine(**settings) -> tuple[Engine, GatedPredictor, Recorder]:
    predictor, meters = GatedPredictor(), Recorder()
    defaults = {"max_queue": 4, "max_texts": 2, "inline_max_texts": 0, "batching": "always"}
    return Engine(predictor, ServeConfig(**{**defaults, **settings}), meters), predictor, meters


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def model_idle(e: Engine) -> None:
    """Until the model thread has returned from its call (an answer can come before: a deadline)."""
    for _ in range(500):
        if not e._in_thread:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the model call never returned")


def test_a_request_past_the_queue_is_shed_with_a_retry_time():
    async def scenario():
        e, predictor, meters = engine()
        first = asyncio.create_task(e.classify(["a", "b"]))  # taken by the model, which waits at the gate
        await settle()
        queued = asyncio.create_task(e.classify(["c", "d"]))
        await settle()
        assert e.queued_texts == 4 and e.not_ready().startswith("not ready: the queue is full")
        with pytest.raises(Shed) as info:
            await e.classify(["e"])
        assert info.value.reason == "queue_full" and info.value.retry_after_s >= 1
        assert "serve.max_queue 4" in info.value.message
        predictor.gate.set()
        assert len(await first) == 2 and len(await queued) == 2
        assert e.queued_texts == 0 and e.not_ready() is None
        assert meters.sheds == ["queue_full"] and meters.depths[-1] == 0 and (2, 0) in meters.calls
        e.close()

    asyncio.run(scenario())


def test_a_request_past_its_deadline_is_never_computed():
    async def scenario():
        e, predictor, meters = engine(request_timeout_s=0.2)
        first = asyncio.create_task(e.classify(["running"]))
        await settle()
        with pytest.raises(Shed) as info:
            await e.classify(["too late"])
        assert info.value.reason == "deadline" and "serve.request_timeout_s" in info.value.message
        predictor.gate.set()
        with pytest.raises(Shed):  # its own call ran past the deadline: answered 503 too
            await first
        await model_idle(e)
        assert predictor.computed == ["running"] and meters.sheds == ["deadline"]
        assert e.queued_texts == 0
        e.close()

    asyncio.run(scenario())


def test_a_request_whose_client_went_away_is_never_computed():
    async def scenario():
        e, predictor, meters = engine()
        first = asyncio.create_task(e.classify(["running"]))
        await settle()
        hang_up = asyncio.Event()
        waiting = asyncio.create_task(e.classify(["abandoned"], gone=hang_up.wait))
        await settle()
        assert e.queued_texts == 2
        hang_up.set()
        with pytest.raises(Shed) as info:
            await waiting
        assert info.value.reason == "client_gone" and e.queued_texts == 1
        predictor.gate.set()
        await first
        await model_idle(e)
        assert predictor.computed == ["running"] and meters.sheds == ["client_gone"]
        e.close()

    asyncio.run(scenario())


def test_a_model_call_past_the_request_timeout_makes_the_engine_not_ready():
    async def scenario():
        e, predictor, _ = engine(request_timeout_s=0.05)
        first = asyncio.create_task(e.classify(["stuck"]))
        await asyncio.sleep(0.15)
        assert "the model thread is stuck" in (e.not_ready() or "")
        predictor.gate.set()
        with pytest.raises(Shed):
            await first
        await model_idle(e)
        assert e.not_ready() is None
        e.close()

    asyncio.run(scenario())


def test_without_merging_each_request_is_its_own_model_call():
    async def scenario():
        e, predictor, meters = engine(batching="never")
        tasks = [asyncio.create_task(e.classify([f"t{i}"])) for i in range(3)]
        await settle()
        predictor.gate.set()
        await asyncio.gather(*tasks)
        assert [texts for texts, _ in meters.calls] == [1, 1, 1] and predictor.computed == ["t0", "t1", "t2"]
        e.close()

    asyncio.run(scenario())


def test_truncated_texts_are_counted_per_model_call():
    async def scenario():
        e, predictor, meters = engine(inline_max_texts=2)
        predictor.gate.set()
        await e.classify(["short", "a text well over twenty characters"])
        assert meters.calls == [(2, 1)]
        e.close()

    asyncio.run(scenario())


def test_readyz_503_carries_the_reason():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Service is not ready"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/readyz", "method": "GET"}
    asyncio.run(JSONErrors(app, why_not_ready=lambda: "not ready: the queue is full")(scope, None, send))
    assert sent[0]["status"] == 503 and b'"error": "not ready: the queue is full"' in sent[1]["body"]
