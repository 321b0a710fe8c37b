"""Build, export and time one shape in ONNX Runtime; interleaved with a reference model.

A candidate is built as the deployed model is: a seeded random-weight sequence classifier at the
shape (latency does not depend on weight values), exported, optionally graph-optimised and
quantised by :mod:`runtime.recipe` — the recipe ``bort export`` uses — and run in a session
from :mod:`runtime.session` with the serving options (intra-op = num_threads, inter-op 1,
sequential). So the search times, for each shape, the graph ``bort export`` writes and ``bort
serve`` runs for it (a test compares the two graphs). The head is :data:`TIMING_LABELS` classes
wide whatever the task: its cost, one hidden x classes product on one token, does not move
latency, and the latency cache stays shared between tasks.

Cost per candidate: the recipe saves the random classifier and exports it through Optimum, where
the search used to trace a bare encoder with ``torch.onnx.export`` and quantise it with
``quantize_dynamic``'s defaults. Random weights to a loaded session (build only; timing runs
excluded), medians of 2-3 runs interleaved old/new on this shared 2-core AMD EPYC (AVX-512 VNNI),
MiniLM's vocabulary, batch 1, sequence 128, 2 threads:

============== =================== ===================
shape          fp32 old -> new      int8 old -> new
============== =================== ===================
2/3/33/37      0.24 -> 0.28 s       0.28 -> 0.35 s
3/6/192/768    0.41 -> 0.51 s       0.50 -> 0.82 s
6/12/384/1536  1.15 -> 1.35 s       1.85 -> 2.85 s
4/8/1024/768   4.0 -> 3.4 s         4.2 -> 6.9 s
============== =================== ===================

So fp32 costs about the same (0.9-1.2x), int8 1.3-1.7x (ORTQuantizer's per-channel preset), a
second or three per candidate at these sizes; each shape is built once (the latency cache).

Why a reference: on a machine that other jobs share, the load changes during a sweep, and a
shape timed in a busy minute looks slower than one timed in a quiet minute — enough to invert
the ordering of whole regions of the grid. So every candidate run is paired with a run of one
fixed reference session kept open for the whole sweep (reference, candidate, reference,
candidate, ...). Each pair sees the same load; the paired ratio candidate / reference is what
the search compares, scaled back to milliseconds by the reference's own standalone latency.

Two sessions taking turns on the same cores must not spin between their calls (``PROTOCOL`` 2):
onnxruntime's intra-op threads busy-wait after a call, and the idle session's spinning pool then
takes the cores from the other's run. Measured here (2-core Intel Xeon, the embedded default's
labeller and its 4/6/192/768 student, fp32, batch 1, 26 tokens, 2 threads, medians of 60 runs):
alone, 3.43-3.59 ms and 0.95-1.01 ms; in turns with the serving options, 8.40-8.96 ms and
1.40-1.55 ms, a ratio of 0.17 where alone it is 0.26-0.28; in turns with ``spin_stop`` (spinning
inside a call, as served, and not after it), 4.12-4.40 ms and 1.16-1.23 ms, ratio 0.28. Protocol
1 overstated the small shapes' speedup over the source by about 1.6x. ``runtime.speed`` times
its variants the same way.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from runtime import recipe
from runtime.session import open_session

EXPORTER = recipe.RECIPE
TIMING_LABELS = ("LABEL_0", "LABEL_1")
PROTOCOL = 2  # in the latency cache's keys: 2, sessions stop spinning when a call returns


def summarize(samples_ms: list[float] | np.ndarray, prefix: str = "") -> dict[str, float]:
    """p10/p50/p90/p99, mean, the trimmed mean over the 10th-90th percentile window, min, std."""
    x = np.asarray(samples_ms, dtype=float)
    lo, hi = np.percentile(x, [10, 90])
    window = x[(x >= lo) & (x <= hi)]
    figures = {
        "p10_ms": np.percentile(x, 10), "p50_ms": np.percentile(x, 50), "p90_ms": np.percentile(x, 90),
        "p99_ms": np.percentile(x, 99), "mean_ms": x.mean(),
        "trimmed_mean_ms": window.mean() if window.size else x.mean(), "min_ms": x.min(), "std_ms": x.std(),
    }
    return {f"{prefix}{k}": round(float(v), 4) for k, v in figures.items()}


def export_candidate(arch: Any, family: str, base_config: Any, settings: Any, workdir: Path,
                     seed: int = 0) -> Path:
    """The folder whose ``model.onnx`` the search times for `arch`: ``bort export``'s recipe on a
    random classifier, at ``settings.precision`` with ``settings.optimize_graph`` and
    ``settings.quantization``."""
    model_dir = recipe.random_classifier(arch, workdir / "hf", family=family, base_config=base_config,
                                         labels=TIMING_LABELS, seed=seed)
    gc.collect()  # the PyTorch model is saved and gone; do not carry it through the export
    target, _ = recipe.quantization_target(settings.quantization)
    return recipe.export_model(model_dir, workdir / "onnx", settings.precision, target, settings.optimize_graph)


class TimedSession:
    """An ONNX Runtime session plus a fixed, seeded input batch; ``run()`` returns milliseconds."""

    def __init__(self, path: Path, num_threads: int, batch_size: int, seq_len: int, vocab_size: int,
                 seed: int = 0):
        # the options bort serve runs with, but an idle session stops spinning when its call returns:
        # the candidate and its reference run in turns on the same cores (see PROTOCOL)
        self.session = open_session(path, num_threads, spin_stop=True)
        rng = np.random.default_rng(seed)
        shape = (batch_size, seq_len)
        feed_all = {
            "input_ids": rng.integers(min(1000, vocab_size - 1), vocab_size, shape, dtype=np.int64),
            "attention_mask": np.ones(shape, dtype=np.int64),
            "token_type_ids": np.zeros(shape, dtype=np.int64),
        }
        self.feed = {i.name: feed_all[i.name] for i in self.session.get_inputs()}

    def run(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feed)
        return (time.perf_counter() - start) * 1e3


def build_session(arch: Any, family: str, base_config: Any, settings: Any, seed: int = 0) -> TimedSession:
    """Random weights -> the recipe's ONNX (-> int8) -> a session; the files are deleted once it is loaded."""
    workdir = Path(tempfile.mkdtemp(prefix="bort-lat-"))
    try:
        folder = export_candidate(arch, family, base_config, settings, workdir, seed)
        return TimedSession(folder / "model.onnx", settings.num_threads, settings.batch_size, settings.seq_len,
                            recipe.vocab_size(folder), seed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def time_interleaved(candidate: TimedSession, reference: TimedSession | None, warmup_runs: int,
                     timed_runs: int) -> tuple[list[float], list[float]]:
    """Warm both up, then alternate reference / candidate runs (order flipped every pair so
    neither always runs first). Returns (candidate ms, reference ms), paired by index."""
    for _ in range(warmup_runs):
        candidate.run()
        if reference is not None:
            reference.run()
    cand, ref = [], []
    for i in range(timed_runs):
        if reference is None:
            cand.append(candidate.run())
            continue
        if i % 2:
            cand.append(candidate.run())
            ref.append(reference.run())
        else:
            ref.append(reference.run())
            cand.append(candidate.run())
    return cand, ref
