"""Which precision serves faster on this CPU, measured: the rule ``bort export`` deploys by and the
search's ``optimize.precision=auto`` times with.

int8 is not faster everywhere: with AVX-512 VNNI (or AMX) onnxruntime's integer kernels beat fp32
several times over, on AVX2 alone dynamic int8 measured ~15% faster at batch 1 and no faster
under load (shared/stack.md). So each variant is timed here, side by side, interleaved round by
round in one process, with the serving session options (:mod:`runtime.session`), on a workload
shaped like the task's traffic:

- **one user**: one text of the task's median token length, batch 1 (``batch1_p50_ms``);
- **under load**: a burst of ``batch`` typical texts answered the way the service runs that
  variant: fp32 and static int8 merged into one batch (their answers do not depend on the batch,
  so the service merges them), run as the predictor runs a batch (:func:`runtime.batching.run_batch`:
  split by length into calls), dynamic int8 one text per call (never merged: its activation
  scales come from the batch) (``load_ms_per_text``, the median over rounds).

**Faster** means: under load at least ``min_speedup`` times fp32's texts per second, and at one
user no more than ``batch1_tolerance`` times fp32's p50. An int8 variant is deployed only when it is
accurate enough (the caller's gate) and faster; among those, the one fastest under load.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.batching import run_batch
from runtime.session import open_session

# Whether the service merges concurrent requests into one call for this precision (serve/app.py).
MERGES = {"fp32": True, "int8": False, "int8_static": True}


@dataclass(frozen=True)
class Workload:
    """Token ids to time: one median-length text, and bursts of typical texts.

    ``single``: feeds of one text, (1, median tokens). ``bursts``: each a list of per-text feeds
    (1, own tokens); every round times the next burst, the same one for every variant.
    """

    single: dict[str, np.ndarray]
    bursts: list[list[dict[str, np.ndarray]]]
    median_tokens: int
    pad_id: int = 0
    description: str = ""

    @property
    def batch(self) -> int:
        return len(self.bursts[0])


def _feeds(ids: Sequence[int], input_names: Sequence[str]) -> dict[str, np.ndarray]:
    arrays = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
              "token_type_ids": np.zeros((1, len(ids)), np.int64)}
    return {name: arrays[name] for name in input_names}


def task_workload(token_ids: Sequence[Sequence[int]], input_names: Sequence[str], batch: int, pad_id: int = 0,
                  bursts: int = 16, seed: int = 0) -> Workload:
    """A workload from real texts' token ids (already truncated as the service truncates):
    the single text is one of median length, the bursts seeded samples of `batch` texts."""
    if not token_ids:
        raise ValueError("a task workload needs at least one text")
    lengths = np.array([len(ids) for ids in token_ids])
    median = int(np.median(lengths))
    single = token_ids[int(np.argmin(np.abs(lengths - median)))]
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(len(token_ids), size=batch, replace=len(token_ids) < batch) for _ in range(bursts)]
    return Workload(single=_feeds(single, input_names),
                    bursts=[[_feeds(token_ids[i], input_names) for i in pick] for pick in chosen],
                    median_tokens=len(single), pad_id=pad_id,
                    description=f"{len(token_ids)} task texts, median {median} tokens, bursts of {batch}")


def fixed_workload(vocab_size: int, seq_len: int, batch: int, input_names: Sequence[str], seed: int = 0) -> Workload:
    """Seeded random ids, every text exactly `seq_len` tokens (the search's timing protocol)."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(min(1000, vocab_size - 1), vocab_size, seq_len).tolist() for _ in range(batch)]
    return Workload(single=_feeds(rows[0], input_names), bursts=[[_feeds(r, input_names) for r in rows]],
                    median_tokens=seq_len, description=f"random ids, {seq_len} tokens, bursts of {batch}")


def merge(feeds: list[dict[str, np.ndarray]], pad_id: int = 0) -> dict[str, np.ndarray]:
    """Per-text feeds padded into one (batch, longest) call, as the predictor pads a merged batch."""
    width = max(f["input_ids"].shape[1] for f in feeds)
    out = {}
    for name in feeds[0]:
        fill = pad_id if name == "input_ids" else 0
        block = np.full((len(feeds), width), fill, dtype=np.int64)
        for row, f in enumerate(feeds):
            block[row, :f[name].shape[1]] = f[name][0]
        out[name] = block
    return out


@dataclass
class VariantTimes:
    """Raw samples of one variant: batch-1 calls and per-text time of each burst."""

    batch1_ms: list[float] = field(default_factory=list)
    load_ms_per_text: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"batch1_p50_ms": round(float(np.median(self.batch1_ms)), 4),
                "load_ms_per_text": round(float(np.median(self.load_ms_per_text)), 4),
                "load_texts_per_s": round(1000.0 / float(np.median(self.load_ms_per_text)), 1),
                "rounds": len(self.load_ms_per_text)}


def measure(folders: dict[str, Path], workload: Workload, num_threads: int, rounds: int = 30,
            warmup_rounds: int = 3, singles_per_round: int = 3) -> dict[str, dict[str, Any]]:
    """Time every variant on `workload`, interleaved: each round runs each variant (order rotated
    every round) on the same burst, so background load hits them alike.

    Args:
        folders: ``{precision: folder holding model.onnx}``; a precision's serving mode (merged or
            one text per call) comes from :data:`MERGES`.

    Returns:
        ``{precision: {"batch1_p50_ms", "load_ms_per_text", "load_texts_per_s", "rounds", "merged"}}``.
    """
    # spin_stop: an idle session's threads must not busy-wait through the next variant's turn (three
    # spinning pools on two cores made merged calls 5x slower); within a call they spin as served.
    sessions = {p: open_session(Path(f) / "model.onnx", num_threads, spin_stop=True) for p, f in folders.items()}
    merged_bursts = [merge(b, workload.pad_id) for b in workload.bursts]
    times = {p: VariantTimes() for p in sessions}
    order = list(sessions)
    for r in range(warmup_rounds + rounds):
        burst, merged = workload.bursts[r % len(workload.bursts)], merged_bursts[r % len(merged_bursts)]
        shift = r % len(order)
        for precision in order[shift:] + order[:shift]:
            session = sessions[precision]
            singles = []
            for _ in range(singles_per_round):
                start = time.perf_counter()
                session.run(None, workload.single)
                singles.append((time.perf_counter() - start) * 1000.0)
            start = time.perf_counter()
            if MERGES.get(precision, True):
                run_batch(session, merged)
            else:
                for feeds in burst:
                    session.run(None, feeds)
            per_text = (time.perf_counter() - start) * 1000.0 / len(burst)
            if r >= warmup_rounds:
                times[precision].batch1_ms.extend(singles)
                times[precision].load_ms_per_text.append(per_text)
    return {p: {**t.summary(), "merged": MERGES.get(p, True)} for p, t in times.items()}


def choose(figures: dict[str, dict[str, Any]], accurate: dict[str, bool], min_speedup: float = 1.05,
           batch1_tolerance: float = 1.05) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """The precision to deploy: fp32 unless an int8 variant is accurate enough and faster (see the
    module docstring); among faster ones, the fastest under load.

    Args:
        figures: :func:`measure`'s output; must hold ``fp32``.
        accurate: ``{precision: passed the accuracy gate}`` (fp32 is the reference, always True).

    Returns:
        ``(precision, why, verdicts)``: verdicts per int8 variant give its speedups and what it failed.
    """
    base = figures["fp32"]
    verdicts: dict[str, dict[str, Any]] = {}
    for precision, fig in figures.items():
        if precision == "fp32":
            continue
        load = base["load_ms_per_text"] / fig["load_ms_per_text"]
        one = base["batch1_p50_ms"] / fig["batch1_p50_ms"]
        failed = []
        if not accurate.get(precision, False):
            failed.append("accuracy gate")
        if load < min_speedup:
            failed.append(f"under load {load:.2f}x fp32 < {min_speedup}")
        if one < 1.0 / batch1_tolerance:
            failed.append(f"at one user {one:.2f}x fp32 < {1.0 / batch1_tolerance:.2f}")
        verdicts[precision] = {"load_speedup": round(load, 3), "batch1_speedup": round(one, 3), "failed": failed}
    qualified = [p for p, v in verdicts.items() if not v["failed"]]
    if not qualified:
        reasons = "; ".join(f"{p}: {', '.join(v['failed'])}" for p, v in verdicts.items()) or "no int8 variant"
        return "fp32", f"fp32: no int8 variant is both accurate and faster ({reasons})", verdicts
    best = min(qualified, key=lambda p: figures[p]["load_ms_per_text"])
    v = verdicts[best]
    return best, (f"{best}: accurate, and {v['load_speedup']:.2f}x fp32's texts/s under load, "
                  f"{v['batch1_speedup']:.2f}x at one user"), verdicts
