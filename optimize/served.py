"""Served latency: what a caller of the endpoint waits for, predicted for every candidate.

For a small student most of what a caller waits for is not the model: HTTP, the route,
tokenising, the client's own work. ``optimize.objective=served`` (the default) ranks candidates
by a prediction of the p50 a caller sees at one user on the task's own texts::

    served_p50(ξ) = fixed_p50 + model_p50(ξ, L50)

- ``L50`` is the median token length of the task's training texts (special tokens included,
  capped at ``optimize.seq_len``). Latency grows with length, so the median request's model time
  is the model time at the median length; candidates are timed at ``L50`` instead of 128.
- ``fixed_p50`` is measured once per machine, through the service's own code path: ``bort serve
  --model-dir`` serving a tiny random classifier that uses the source's tokenizer, called over
  HTTP by Locust's ``FastHttpSession`` (the client of its ``FastHttpUser``, the load test's
  default; :mod:`optimize.probe_client`), one request at a time with the task's training texts.
  Per request, the client's time minus the model's time the service reports in its
  ``Server-Timing`` header is the fixed cost; its median is ``fixed_p50``. It is cached per
  hardware fingerprint, tokenizer, thread count and text sample.

``bench/served_prediction.py`` checks the prediction against Locust-measured p50 for the chosen
student and the source.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bort import processes
from bort.artifacts import atomic_write_json, load_average, measured_busy, sha256_file
from bort.errors import BortError
from bort.families import Arch, Source

log = logging.getLogger(__name__)

PROBE_ARCH = Arch(1, 2, 64, 64)  # a model whose own time is a small part of a request
PROBE_REQUESTS = 300
PROBE_WARMUP = 50
FORMAT = 3  # 3: the probe's client is Locust's FastHttpSession (2: bare geventhttpclient, 1: requests)
ROOT = Path(__file__).resolve().parent.parent  # the project folder: `python -m pipeline.cli` runs from here


@dataclass(frozen=True)
class FixedCost:
    """The service's per-request cost beyond the model, at one user, in milliseconds."""

    fixed_p50_ms: float
    fixed_p90_ms: float
    client_p50_ms: float
    model_p50_ms: float
    requests: int
    num_threads: int
    key: str = ""
    measured_at: str = ""
    load_avg_1m: float | None = None  # the machine's load when measured: a busy probe reads high


def token_lengths(tokenizer: Any, texts: list[Any], cap: int) -> np.ndarray:
    """Token counts (special tokens included) of `texts` (strings or (text, pair) tuples), capped."""
    pairs = [t for t in texts if isinstance(t, (list, tuple))]
    if pairs:
        enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=cap)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=cap)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def median_length(tokenizer: Any, texts: list[Any], cap: int, sample: int = 5000, seed: int = 0) -> int:
    """The median token length of (a seeded sample of) `texts`, capped at `cap`, at least 8."""
    rng = random.Random(seed)
    picked = texts if len(texts) <= sample else rng.sample(texts, sample)
    return int(max(8, min(cap, np.median(token_lengths(tokenizer, picked, cap)))))


def probe_key(source: Source, texts: list[str], num_threads: int, hw: str) -> str:
    """What the fixed cost depends on: machine, tokenizer, threads, the texts sent, this probe's design."""
    tokenizer = next((source.folder / n for n in ("tokenizer.json", "vocab.txt") if (source.folder / n).is_file()),
                     None)
    blob = {"format": FORMAT, "hw": hw, "threads": num_threads, "arch": PROBE_ARCH.label(),
            "tokenizer": sha256_file(tokenizer) if tokenizer else source.name,
            "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def fixed_cost(source: Source, texts: list[str], num_threads: int, cache_dir: Path, hw: str,
               seed: int = 0) -> FixedCost:
    """The cached fixed cost for this machine and task, measured now when absent (about 30 s)."""
    rng = random.Random(seed)
    sample = [t for t in rng.sample(texts, min(len(texts), PROBE_REQUESTS)) if t.strip()]
    key = probe_key(source, sample, num_threads, hw)
    path = Path(cache_dir) / f"served-{key}.json"
    if path.is_file():
        cost = FixedCost(**json.loads(path.read_text(encoding="utf-8")))
        if not measured_busy(cost.load_avg_1m):
            log.info("served latency: fixed cost %.2f ms per request (cached, %s)", cost.fixed_p50_ms, path)
            return cost
        log.info("served latency: the cached fixed cost was measured on a busy machine (load average %.1f); "
                 "measuring it again", cost.load_avg_1m)
    cost = measure_fixed_cost(source, sample, num_threads, key)
    atomic_write_json(path, asdict(cost))
    return cost


def measure_fixed_cost(source: Source, texts: list[str], num_threads: int, key: str = "") -> FixedCost:
    """Serve a tiny model with `bort serve`, send `texts` one at a time, and time what is not the model."""
    from runtime import recipe

    work = Path(tempfile.mkdtemp(prefix="bort-served-"))
    try:
        model = recipe.random_classifier(PROBE_ARCH, work / "torch", family=source.family,
                                         base_config=source.config, tokenizer_dir=source.folder)
        folder = recipe.export_fp32(model, work / "onnx")
        recipe.write_serving(folder, labels=["LABEL_0", "LABEL_1"], is_pair=False, precision="fp32",
                             name="served-latency probe (random weights)", max_seq_len=512, speed_only=True)
        port = processes.free_port()
        spec = processes.ServiceSpec(
            name="served-latency probe", port=port, cwd=str(ROOT), start_timeout_s=120.0,
            command=(sys.executable, "-m", "pipeline.cli", "serve", "--model-dir", str(folder), "--port", str(port),
                     "--set", f"serve.num_threads={num_threads}", "--set", "serve.host=127.0.0.1",
                     # the task's own texts, however long (the run's serve.max_chars was checked at data)
                     "--set", f"serve.max_chars={max(map(len, texts))}"))
        running = processes.start(spec, work / "server.log")
        try:
            client, model_ms = _time_requests(spec.url, texts, work)
        finally:
            processes.stop(running)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fixed = np.asarray(client) - np.asarray(model_ms)
    cost = FixedCost(round(float(np.median(fixed)), 4), round(float(np.percentile(fixed, 90)), 4),
                     round(float(np.median(client)), 4), round(float(np.median(model_ms)), 4), len(client),
                     num_threads, key, time.strftime("%Y-%m-%dT%H:%M:%S"), load_average())
    log.info("served latency: fixed cost %.2f ms per request (client p50 %.2f ms, model %.2f ms, %d requests)",
             cost.fixed_p50_ms, cost.client_p50_ms, cost.model_p50_ms, cost.requests)
    return cost


def _time_requests(url: str, texts: list[str], work: Path) -> tuple[list[float], list[float]]:
    """Client milliseconds and the model milliseconds of each request (after a warm-up), measured by
    :mod:`optimize.probe_client` in a process of its own (Locust's client, which patches the
    standard library for gevent when imported)."""
    texts_file = work / "probe_texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "optimize.probe_client", url, str(texts_file), str(PROBE_WARMUP)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise BortError(f"the served-latency probe's client failed: {done.stderr.strip()[-500:]}")
    answer = json.loads(done.stdout)
    return answer["client_ms"], answer["model_ms"]


class ServedLatency:
    """A latency function for the search whose figures are predicted served latencies.

    Wraps the model-latency meter (timed at the task's median length): every percentile gains the
    fixed cost, and the record keeps the model's own figures as ``model_*``.
    """

    def __init__(self, meter: Any, fixed_ms: float):
        self.meter, self.fixed_ms = meter, fixed_ms

    def __call__(self, arch: Arch) -> dict[str, Any]:
        return served_view(self.meter(arch), self.fixed_ms)

    def cached(self, arch: Arch) -> dict[str, Any] | None:
        """A cached measurement, shifted like a fresh one (the search reads both)."""
        record = self.meter.cached(arch)
        return None if record is None else served_view(record, self.fixed_ms)

    def __getattr__(self, name: str) -> Any:  # freeze_reference, settings, measured, hw, cache
        return getattr(self.meter, name)


def served_view(record: dict[str, Any], fixed_ms: float) -> dict[str, Any]:
    """`record` with each ``p*_ms``/``mean_ms`` shifted by `fixed_ms`; the model's own kept as ``model_*``."""
    out = dict(record)
    for k in ("p10_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "trimmed_mean_ms", "min_ms"):
        if k in record:
            out[f"model_{k}"] = record[k]
            out[k] = round(float(record[k]) + fixed_ms, 4)
    out["fixed_ms"] = fixed_ms
    return out
