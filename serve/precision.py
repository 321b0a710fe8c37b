"""Which precision ``bort export`` deploys: accurate enough *and* faster on this CPU, measured.

``bort export`` builds fp32, dynamic int8 (``int8``) and calibrated static int8 (``int8_static``)
for each role (:mod:`runtime.recipe`), scores each on dev, then times them side by side on this CPU
(:mod:`runtime.speed`) on the task's own texts: one text of the median token length at batch 1,
and bursts of ``export.speed_batch`` dev texts run as the service runs each variant (fp32 and static int8
merged, dynamic int8 one text per call). Under load, what counts by default
(``export.speed_under_load=served``) is the served requests/s of each variant through the
service itself at ``export.speed_users`` clients (:mod:`serve.served_speed`): for a small model the
service, not the model, sets the pace, and merging moves the model off the event loop, which the
model's own timing cannot show (``model``: the model-only figure decides instead).
``export.precision=auto`` deploys the fastest variant that is within ``export.max_int8_drop_points``
of fp32 on dev and at least ``export.min_speedup`` times fp32's throughput under load without
being more than ``export.batch1_tolerance`` slower at one user; otherwise fp32. The manifest keeps every figure,
the CPU model and ISA flags the decision was made on, and the reason in one sentence.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import cpu_info
from runtime import speed
from serve.predictor import Predictor

log = logging.getLogger(__name__)


def calibration_feeds(fp32_dir: Path, train: list[Any], count: int, seq_len: int, seed: int) -> list[dict[str, Any]]:
    """Feeds of `count` training texts (a seeded sample), tokenised as the service tokenises them
    (truncated to `seq_len`), one text each: what fixes static int8's activation ranges."""
    predictor = Predictor(fp32_dir, num_threads=1, max_seq_len=seq_len)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(train), size=min(count, len(train)), replace=False) if train else []
    feeds = []
    for i in sorted(int(i) for i in picked):
        e = train[i]
        batch = predictor.tokenize([e.text], [(e.text, e.text_pair)] if e.text_pair is not None else None)
        feeds.append({name: array[0] for name, array in batch.feeds.items()})
    return feeds


def task_workload(fp32_dir: Path, examples: list[Any], seq_len: int, batch: int, seed: int) -> speed.Workload:
    """:func:`runtime.speed.task_workload` on `examples` (dev), tokenised as the service does."""
    predictor = Predictor(fp32_dir, num_threads=1, max_seq_len=seq_len)
    ids = []
    for e in examples:
        pairs = [(e.text, e.text_pair)] if e.text_pair is not None else None
        ids.append(predictor.tokenize([e.text], pairs).feeds["input_ids"][0].tolist())
    return speed.task_workload(ids, predictor.input_names, batch, predictor.pad_id, seed=seed)


def decide(ec: Any, folders: dict[str, Path], drops: dict[str, float], workload: speed.Workload,
           serve_cfg: Any = None, requests: list[Any] | None = None) -> dict[str, Any]:
    """Time every variant on this CPU and pick the one to deploy (see the module docstring).

    Args:
        ec: the ``export`` config section.
        folders: ``{precision: folder}``, fp32 included.
        drops: ``{int8 precision: dev accuracy drop in points against fp32}``.
        serve_cfg, requests: the service's settings and request items (dev texts) for the served
            measurement (``export.speed_under_load=served``).

    Returns:
        ``{"precision", "why", "figures", "verdicts", "workload", "cpu", "isa", "threads", "rule"}``.
    """
    accurate = {p: d <= ec.max_int8_drop_points for p, d in drops.items()}
    figures = speed.measure(folders, workload, ec.num_threads, rounds=ec.speed_rounds)
    under_load = "model texts/s (bursts of dev texts)"
    if ec.speed_under_load == "served" and serve_cfg is not None and requests:
        from serve import served_speed

        served = served_speed.measure(folders, serve_cfg, requests, users=ec.speed_users, seconds=ec.speed_seconds,
                                      rounds=ec.speed_served_rounds)
        for precision, fig in figures.items():  # the load criterion becomes the served one
            fig.update(model_load_ms_per_text=fig["load_ms_per_text"], **served[precision],
                       load_ms_per_text=round(1000.0 / served[precision]["served_rps"], 4))
        under_load = f"served requests/s at {ec.speed_users} users through the service"
    auto, why, verdicts = speed.choose(figures, accurate, ec.min_speedup, ec.batch1_tolerance)
    precision = auto
    if ec.precision != "auto":
        precision, why = requested(ec.precision, drops, ec.max_int8_drop_points)
        why += f" (export.precision={ec.precision}; auto would deploy {auto})"
    info = cpu_info()
    return {"precision": precision, "why": why, "figures": figures, "verdicts": verdicts,
            "workload": workload.description, "median_tokens": workload.median_tokens, "batch": workload.batch,
            "cpu": info["model"], "isa": info["isa"], "threads": ec.num_threads,
            "under_load": under_load,
            "rule": (f"int8 only when within {ec.max_int8_drop_points} dev points of fp32, >= {ec.min_speedup}x "
                     f"fp32's {under_load}, and at most {ec.batch1_tolerance}x fp32's model p50 at one user "
                     f"({workload.median_tokens} tokens, the dev median, batch 1); the fastest under load of those")}


def requested(precision: str, drops: dict[str, float], max_drop_points: float) -> tuple[str, str]:
    """An explicitly requested precision, kept only if accurate enough (fp32 always is)."""
    if precision == "fp32":
        return "fp32", "fp32 as requested"
    drop = drops[precision]
    if drop <= max_drop_points:
        return precision, f"{precision} as requested: dev accuracy drop {drop:.2f} points <= {max_drop_points}"
    return "fp32", (f"{precision} dev accuracy drop {drop:.2f} points > export.max_int8_drop_points="
                    f"{max_drop_points}: keeping fp32 for deployment")


def summary(decision: dict[str, Any]) -> str:
    """One line for logs and the CLI: the figures each variant was judged on."""
    parts = [f"{p} {f['batch1_p50_ms']:.2f} ms at batch 1, {1000.0 / f['load_ms_per_text']:.0f}/s under load"
             for p, f in decision["figures"].items()]
    return f"{'; '.join(parts)} ({', '.join(decision['isa']) or 'no SIMD flags'}) -> {decision['why']}"
