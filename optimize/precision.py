"""``optimize.precision=auto``: the search times shapes at the precision ``bort export`` would deploy here.

``bort export`` deploys int8 only where it is faster on the serving CPU (:mod:`runtime.speed`), so
a search that always timed int8 (or always fp32) would rank shapes by a latency the deployed model
does not have. For ``auto`` the source's own shape, with random weights (latency does not depend
on weight values), is built at fp32, dynamic int8 and static int8 by the export recipe and timed
side by side by the same rule export applies, on the task's training texts tokenised as the
service tokenises them (bursts of :data:`BURST` texts), with :mod:`runtime.speed`'s default
thresholds (``export.min_speedup`` and ``export.batch1_tolerance`` default to the same; the search
does not read a downstream stage's settings). Accuracy is not known yet: export checks it, and
falls back to fp32 when int8 costs too much, which its manifest then says.

The decision is cached per hardware fingerprint, shape, vocabulary, threads, recipe and workload
(``$BORT_CACHE/latency/<hw>.precision.jsonl``): measured once per machine, a few seconds.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import cpu_info, hardware_fingerprint
from optimize.latency import JsonlStore
from runtime import recipe, speed

log = logging.getLogger(__name__)

BURST = 8  # texts per burst under load: export.speed_batch's default
SAMPLE_TEXTS = 512  # training texts tokenised for the workload


def search_precision(opt: Any, source: Any, texts: list[Any], seed: int = 0, cache_path: Path | None = None,
                     hw: str | None = None) -> tuple[str, dict[str, Any]]:
    """The precision to time candidates at, and why.

    Args:
        opt: the ``optimize`` config section (``precision``, ``num_threads``, ``seq_len``,
            ``optimize_graph``, ``quantization``).
        source: the resolved source (``arch``, ``family``, ``config``, ``folder``).
        texts: training texts (or ``(text, pair)`` tuples) the workload is drawn from; empty: random
            ids of ``opt.seq_len`` tokens.
    """
    if opt.precision != "auto":
        return opt.precision, {"precision": opt.precision, "why": "set by optimize.precision"}
    hw = hw or hardware_fingerprint()
    target, _ = recipe.quantization_target(opt.quantization)
    vocab = int(getattr(source.config, "vocab_size", 0) or 0)
    ids = token_ids(source.folder, texts, opt.seq_len, seed) if texts else []
    lengths = sorted(len(i) for i in ids)
    key = json.dumps([hw, source.family, source.arch.label(), vocab, opt.num_threads, opt.optimize_graph,
                      [recipe.recipe_key(p, opt.optimize_graph, target) for p in recipe.PRECISIONS],
                      lengths[len(lengths) // 2] if lengths else opt.seq_len, BURST,
                      "runtime.speed v1, static: per-channel weight MatMuls"])
    store = JsonlStore(cache_path or _cache_path(hw))
    cached = store.get(key)
    if cached is None:
        cached = {"key": key, **measure(source, opt, target, ids, seed), "hw": hw,
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        store.put(cached)
    decision = {k: v for k, v in cached.items() if k != "key"}
    log.info("optimize.precision=auto: %s", decision["why"])
    return decision["precision"], decision


def _cache_path(hw: str) -> Path:
    from bort.assets import cache_dir

    return cache_dir() / "latency" / f"{hw}.precision.jsonl"


def token_ids(folder: Path, texts: list[Any], seq_len: int, seed: int) -> list[list[int]]:
    """Token ids of a seeded sample of `texts`, truncated to `seq_len` as the service truncates."""
    from bort.families import load_tokenizer

    tokenizer = load_tokenizer(folder)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(texts), size=min(SAMPLE_TEXTS, len(texts)), replace=False)
    out = []
    for i in sorted(int(i) for i in picked):
        text = texts[i]
        first, second = (text, None) if isinstance(text, str) else (text[0], text[1])
        out.append(tokenizer(first, second, truncation=True, max_length=seq_len)["input_ids"])
    return out


def measure(source: Any, opt: Any, target: str, ids: list[list[int]], seed: int) -> dict[str, Any]:
    """Build the source's shape at every precision (random weights) and apply :func:`runtime.speed.choose`."""
    work = Path(tempfile.mkdtemp(prefix="bort-precision-"))
    try:
        model_dir = recipe.random_classifier(source.arch, work / "hf", family=source.family,
                                             base_config=source.config, seed=seed)
        fp32 = recipe.export_fp32(model_dir, work / "fp32", opt.optimize_graph)
        inputs = recipe.graph_inputs(fp32)
        folders = {"fp32": fp32, "int8": recipe.quantize_int8(fp32, work / "int8", target, opt.optimize_graph),
                   "int8_static": recipe.quantize_static_int8(
                       fp32, work / "int8_static", target, opt.optimize_graph,
                       [{n: row for n, row in _feeds(x).items() if n in inputs} for x in ids[:64]]
                       or recipe.random_calibration(recipe.vocab_size(fp32), opt.seq_len, input_names=inputs))}
        workload = (speed.task_workload(ids, inputs, BURST, seed=seed) if ids else
                    speed.fixed_workload(recipe.vocab_size(fp32), opt.seq_len, BURST, inputs, seed))
        figures = speed.measure(folders, workload, opt.num_threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    precision, why, verdicts = speed.choose(figures, {p: True for p in figures})
    info = cpu_info()
    return {"precision": precision, "why": f"{why} on the source's shape {source.arch.label()} (speed only)",
            "figures": figures, "verdicts": verdicts, "workload": workload.description, "cpu": info["model"],
            "isa": info["isa"], "threads": opt.num_threads}


def _feeds(ids: list[int]) -> dict[str, list[int]]:
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids)}
