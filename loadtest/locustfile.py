"""Locust users for a bort classification service (``POST /classify``), driven by environment variables.

Every request carries texts drawn uniformly from the task's real test split, so the request mix has
the real length distribution. Every response is validated (status 200, JSON, one result per text,
labels in the task's label set); anything else is a Locust failure. Requests made during the
warm-up are excluded from the figures: after ``BORT_LOADTEST_WARMUP_S`` the stats are reset and the
exact per-request samples start being recorded.

Environment (``bort loadtest`` sets them; set them yourself to run Locust by hand):

- ``BORT_LOADTEST_TEXTS``: a JSON file ``{"texts": [...], "labels": [...]}`` (pair tasks:
  ``"pairs": [[a, b], ...]`` instead of ``"texts"``); or
  ``BORT_LOADTEST_RUN_DIR``: a bort run folder whose test split (``bort data --prepare``) is used.
- ``BORT_LOADTEST_TEXTS_PER_REQUEST`` (1), ``BORT_LOADTEST_SEED`` (0), ``BORT_LOADTEST_WARMUP_S`` (0).
- ``BORT_LOADTEST_API_KEY``: sent as ``X-API-Key`` when set (a service that requires a key).
- ``BORT_LOADTEST_CLIENT``: ``fast`` (default: Locust's ``FastHttpUser``, geventhttpclient) or
  ``requests`` (``HttpUser``, python-requests). The generator shares the machine with the server it
  measures, so its own CPU per request is taken from the server: requests costs several times more.
- ``BORT_LOADTEST_MODE``: ``closed`` (default: each user sends its next request when the last one
  returns, after ``BORT_LOADTEST_THINK_S``) or ``open``: constant throughput, a total of
  ``BORT_LOADTEST_TARGET_RPS`` spread over ``BORT_LOADTEST_USERS`` users with Locust's
  ``constant_throughput``. Each user still waits for its own answer, so when the server cannot keep
  up the achieved rate falls below the target: compare the two.
- ``BORT_LOADTEST_SHAPE``: ``none`` (``-u``/``--run-time`` decide), ``step`` (the user counts in
  ``BORT_LOADTEST_STEPS``, e.g. ``1,4,8``, each held ``BORT_LOADTEST_STEP_S`` seconds) or ``ramp``
  (linear from 1 to ``BORT_LOADTEST_RAMP_USERS`` over ``BORT_LOADTEST_RAMP_S`` seconds).
- ``BORT_LOADTEST_SAMPLES``: path prefix; each Locust process that made requests writes
  ``<prefix>.<pid>.csv`` with one row per measured request: ``t_s, users, latency_ms, ok``.
  Locust's own CSV rounds response times to whole milliseconds (tens above 100 ms), too coarse for
  a 3 ms model, so bort's percentiles come from these samples.

Headless and bounded, e.g. (one machine)::

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:3100 -u 8 -r 8 \\
        --run-time 35s --csv out/run --exit-code-on-error 1

Distributed, for loads one machine cannot generate (one master, any number of workers, which may
run on other machines with ``--master-host``; the master aggregates the stats and writes the CSV)::

    locust -f loadtest/locustfile.py --master --headless --expect-workers 2 -H http://HOST:PORT \\
        -u 64 -r 64 --run-time 60s --csv out/run --master-bind-host 0.0.0.0
    locust -f loadtest/locustfile.py --worker --master-host MASTER_IP      # on each generator
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, HttpUser, LoadTestShape, between, constant, constant_throughput, events, task

MODE = os.environ.get("BORT_LOADTEST_MODE", "closed")
SHAPE = os.environ.get("BORT_LOADTEST_SHAPE", "none")
WARMUP_S = float(os.environ.get("BORT_LOADTEST_WARMUP_S", "0"))
TEXTS_PER_REQUEST = int(os.environ.get("BORT_LOADTEST_TEXTS_PER_REQUEST", "1"))
SEED = int(os.environ.get("BORT_LOADTEST_SEED", "0"))
SAMPLES_PREFIX = os.environ.get("BORT_LOADTEST_SAMPLES", "")
API_KEY = os.environ.get("BORT_LOADTEST_API_KEY", "")
CLIENT = os.environ.get("BORT_LOADTEST_CLIENT", "fast")

if MODE not in ("closed", "open"):
    raise ValueError(f"BORT_LOADTEST_MODE must be closed or open, got {MODE!r}")
if CLIENT not in ("fast", "requests"):
    raise ValueError(f"BORT_LOADTEST_CLIENT must be fast or requests, got {CLIENT!r}")
if SHAPE not in ("none", "step", "ramp"):
    raise ValueError(f"BORT_LOADTEST_SHAPE must be none, step or ramp, got {SHAPE!r}")


def load_texts() -> tuple[str, list, list[str]]:
    """The request field (``texts`` or ``pairs``), its items, and the label set."""
    path = os.environ.get("BORT_LOADTEST_TEXTS")
    if path:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        field = "pairs" if "pairs" in data else "texts"
        items, labels = list(data[field]), list(data["labels"])
    elif os.environ.get("BORT_LOADTEST_RUN_DIR"):
        from bort import data as task_data  # only here: a texts file needs no bort install

        task = task_data.load_prepared(Path(os.environ["BORT_LOADTEST_RUN_DIR"]))
        field = "pairs" if task.is_pair else "texts"
        items = [[ex.text, ex.text_pair] if task.is_pair else ex.text for ex in task.test]
        labels = list(task.labels)
    else:
        raise RuntimeError("set BORT_LOADTEST_TEXTS (a JSON file) or BORT_LOADTEST_RUN_DIR (a bort run)")
    if not items or not labels:
        raise RuntimeError("the load test needs at least one text and one label")
    return field, items, labels


FIELD, ITEMS, LABELS = load_texts()
LABEL_SET = frozenset(LABELS)


def _wait_time():
    if MODE == "open":
        target = float(os.environ.get("BORT_LOADTEST_TARGET_RPS", "0"))
        users = int(os.environ.get("BORT_LOADTEST_USERS", "0"))
        if target <= 0 or users <= 0:
            raise ValueError("open mode needs BORT_LOADTEST_TARGET_RPS > 0 and BORT_LOADTEST_USERS > 0")
        return constant_throughput(target / users)
    think_s = float(os.environ.get("BORT_LOADTEST_THINK_S", "0"))
    return constant(0) if think_s <= 0 else between(0.5 * think_s, 1.5 * think_s)


# -- measurement window: warm-up first, then reset stats and record samples ---------------------
_measure = {"on": WARMUP_S <= 0, "t0": time.time()}
_samples: list[tuple[float, int, float, int]] = []


def validate(payload: object, sent: int) -> str | None:
    """Why a /classify answer is wrong, or None when it is right."""
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
        return "response has no 'results' list"
    results = payload["results"]
    if len(results) != sent:
        return f"{len(results)} results for {sent} texts"
    for item in results:
        if not isinstance(item, dict) or item.get("label") not in LABEL_SET:
            label = item.get("label") if isinstance(item, dict) else item
            return f"label {label!r} is not one of {sorted(LABEL_SET)}"
    return None


def _head(resp: object) -> str:
    """The start of a failed answer's body, for the failure message (read only on failure: decoding
    every body would add to the generator's CPU per request). FastHttpUser gives None for no body."""
    return (resp.text or "")[:200]


class ClassifyUser(FastHttpUser if CLIENT == "fast" else HttpUser):
    """One client: sends real test texts to /classify and checks every answer."""

    wait_time = _wait_time()
    _count = 0
    headers = None

    def on_start(self) -> None:
        # Each user its own seeded stream, so runs are repeatable and users do not move in lockstep.
        ClassifyUser._count += 1
        self.rng = random.Random(SEED * 100_003 + ClassifyUser._count + os.getpid())
        if API_KEY:  # a service listening beyond loopback requires one
            self.headers = {"X-API-Key": API_KEY}

    def context(self) -> dict:
        # The user count at the time of each request, so step runs can be split by level.
        runner = self.environment.runner
        return {"users": runner.user_count if runner is not None else 0}

    @task
    def classify(self) -> None:
        items = [self.rng.choice(ITEMS) for _ in range(TEXTS_PER_REQUEST)]
        with self.client.post("/classify", json={FIELD: items}, name="/classify", headers=self.headers,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {_head(resp)}")
                return
            try:
                payload = resp.json()
            except ValueError:
                resp.failure(f"not JSON: {_head(resp)}")
                return
            problem = validate(payload, len(items))
            if problem:
                resp.failure(problem)
            else:
                resp.success()


@events.request.add_listener
def _record(response_time: float, exception: BaseException | None, **kwargs) -> None:
    if _measure["on"]:
        users = kwargs["context"].get("users", 0) if kwargs.get("context") else 0
        _samples.append((time.time() - _measure["t0"], users, float(response_time), int(exception is None)))


@events.test_start.add_listener
def _start_warmup_timer(environment, **kwargs) -> None:
    _measure["t0"] = time.time()
    if WARMUP_S > 0:
        _measure["on"] = False
        gevent.spawn_later(WARMUP_S, _end_warmup, environment)


def _end_warmup(environment) -> None:
    # Reset on workers too, so warm-up requests not yet reported to the master are dropped with it.
    if environment.runner is not None:
        environment.runner.stats.reset_all()
    _samples.clear()
    _measure.update(on=True, t0=time.time())


@events.quitting.add_listener
def _write_samples(environment, **kwargs) -> None:
    if not SAMPLES_PREFIX or not _samples:
        return
    path = Path(f"{SAMPLES_PREFIX}.{os.getpid()}.csv")
    rows = "".join(f"{t:.4f},{u},{ms:.4f},{ok}\n" for t, u, ms, ok in _samples)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("t_s,users,latency_ms,ok\n" + rows, encoding="utf-8")
    os.replace(tmp, path)


# -- shapes: selected by BORT_LOADTEST_SHAPE; the others stay abstract so Locust ignores them ------
class StepShape(LoadTestShape):
    """Hold each user count in BORT_LOADTEST_STEPS for BORT_LOADTEST_STEP_S seconds, then stop."""

    abstract = SHAPE != "step"

    def tick(self) -> tuple[int, float] | None:
        steps = [int(x) for x in os.environ.get("BORT_LOADTEST_STEPS", "1").split(",")]
        step_s = float(os.environ.get("BORT_LOADTEST_STEP_S", "30"))
        index = int(self.get_run_time() // step_s)
        return (steps[index], float(steps[index])) if index < len(steps) else None


class RampShape(LoadTestShape):
    """Linear from 1 user to BORT_LOADTEST_RAMP_USERS over BORT_LOADTEST_RAMP_S seconds, then stop."""

    abstract = SHAPE != "ramp"

    def tick(self) -> tuple[int, float] | None:
        top = int(os.environ.get("BORT_LOADTEST_RAMP_USERS", "8"))
        ramp_s = float(os.environ.get("BORT_LOADTEST_RAMP_S", "60"))
        elapsed = self.get_run_time()
        if elapsed >= ramp_s:
            return None
        return max(1, round(1 + (top - 1) * elapsed / ramp_s)), float(top)
