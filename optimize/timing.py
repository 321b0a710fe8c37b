"""Build, export and time one shape in ONNX Runtime; interleaved with a reference model.

A candidate is built with random weights (latency does not depend on weight values), exported
with ``torch.onnx.export(dynamo=False)`` (opset 17, dynamic batch and sequence axes as the
serving export has), optionally quantized to dynamic int8, and run in an ``InferenceSession``
with the serving thread settings (intra-op = num_threads, inter-op 1, sequential). Optimum's
``main_export`` was not faster to run in a side-by-side check and takes about twice as long to
export (it needs a saved folder first), so the search uses the direct exporter.

Why a reference: on a machine that other jobs share, the load changes during a sweep, and a
shape timed in a busy minute looks slower than one timed in a quiet minute — enough to invert
the ordering of whole regions of the grid. So every candidate run is paired with a run of one
fixed reference session kept open for the whole sweep (reference, candidate, reference,
candidate, ...). Each pair sees the same load; the paired ratio candidate / reference is what
the search compares, scaled back to milliseconds by the reference's own standalone latency.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

EXPORTER = "torch.onnx.export(dynamo=False, opset=17, dynamic batch/sequence axes)"
OPSET = 17


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


def export_onnx(model: Any, path: Path, family: str, batch_size: int, seq_len: int) -> None:
    """Export a bare encoder; inputs as the serving tokenizer feeds them."""
    import torch

    names = ["input_ids", "attention_mask"] + ([] if family == "mpnet" else ["token_type_ids"])
    kwargs = {n: torch.ones((batch_size, seq_len), dtype=torch.long) for n in names}
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constant masks: shapes are dynamic anyway
        torch.onnx.export(model, (), str(path), kwargs=kwargs, input_names=names,
                          output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 (weights int8, activations quantized at run time), as the serving path does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


class TimedSession:
    """An ONNX Runtime session plus a fixed, seeded input batch; ``run()`` returns milliseconds."""

    def __init__(self, path: Path, num_threads: int, batch_size: int, seq_len: int, vocab_size: int,
                 seed: int = 0):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
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
    """Random weights -> ONNX (-> int8) -> a session; the files are deleted once it is loaded."""
    from bort.families import random_model

    workdir = Path(tempfile.mkdtemp(prefix="bort-lat-"))
    try:
        model = random_model(arch, family, base_config, seed=seed)
        vocab_size = model.config.vocab_size
        path = workdir / "model.onnx"
        export_onnx(model, path, family, settings.batch_size, settings.seq_len)
        del model
        gc.collect()
        if settings.precision == "int8":
            quantize_int8(path, workdir / "model.int8.onnx")
            path = workdir / "model.int8.onnx"
        return TimedSession(path, settings.num_threads, settings.batch_size, settings.seq_len, vocab_size, seed)
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
