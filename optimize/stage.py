"""``bort optimize``: search the Pareto front of sub-architectures of the source on this CPU.

Reads like the method (method.md §2): resolve the source and the grid; prepare the error estimate
(the teacher's outputs cached once per corpus); measure latency (cached per hardware
fingerprint); estimate error per candidate (stored per candidate in the run folder); run the
FPTAS; write every candidate, the front, the chosen shape, the report, the plot and the manifest.
A killed run, rerun, continues: nothing measured or trained is done again. The error estimate
is :mod:`optimize.error`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from bort.artifacts import (
    Manifest,
    cpu_info,
    is_up_to_date,
    read_manifest,
    stage_dir,
    stage_fingerprint,
    write_manifest,
)
from bort.config import RunConfig
from bort.corpus import corpus_texts
from bort.data import load_prepared
from bort.errors import BortError
from bort.families import Vocab, resolve_source
from optimize.error import error_key, error_steps, make_error_fn
from optimize.executor import make_executor
from optimize.grid import make_grid
from optimize.latency import JsonlStore, LatencyMeter, LatencySettings
from optimize.report import write_outputs
from optimize.search import SearchOptions, run_search
from optimize.timing import EXPORTER

log = logging.getLogger(__name__)
STAGE = "optimize"


def search_options(opt: Any) -> SearchOptions:
    return SearchOptions(epsilon=opt.epsilon, max_measured=opt.max_measured, policy=opt.policy,
                         latency_budget_ms=opt.latency_budget_ms, speedup_target=opt.speedup_target,
                         weights=opt.weights, prune_factor=opt.prune_factor,
                         error_time_budget_s=opt.error_time_budget_s, error_seq_len=opt.error_seq_len,
                         inversion_tolerance=opt.inversion_tolerance, workers=opt.workers)


def run(cfg: RunConfig, run_dir: str | Path, args: Any = None) -> Manifest:
    """Search, write ``run_dir/optimize/``, return its manifest (skips when up to date).

    Raises:
        BortError: the grid or policy is misconfigured, or no front point satisfies the policy
            (all figures are written first, so a rerun with another policy re-measures nothing).
    """
    started = time.time()
    run_dir = Path(run_dir)
    folder = stage_dir(run_dir, STAGE)
    fingerprint = stage_fingerprint(cfg, STAGE)
    if is_up_to_date(run_dir, STAGE, fingerprint):
        log.info("optimize: up to date in %s", folder)
        return read_manifest(run_dir, STAGE)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # a half-rewritten folder must not look current
    opt = cfg.optimize
    source = resolve_source(cfg.source.model)
    archs = make_grid(opt.grid, source.arch, opt)
    steps, rule = error_steps(opt)
    log.info("optimize: %d candidates from grid %r; ê by %s, %d steps", len(archs), opt.grid,
             opt.error_estimator, steps)
    corpus = corpus_texts(cfg, load_prepared(run_dir)) if opt.error_estimator == "distill" else ([], [])
    error_fn = make_error_fn(cfg, source, corpus, steps)
    meter = LatencyMeter(source.family, LatencySettings.from_config(opt), base_config=source.config,
                         seed=cfg.seed, reference=source.arch)
    executor = make_executor(opt.workers)
    try:
        result = run_search(archs, family=source.family, vocab=Vocab.from_config(source.config),
                            source_arch=source.arch, latency_fn=meter, error_fn=error_fn,
                            store=JsonlStore(folder / "errors.jsonl"), error_key=error_key(cfg, steps),
                            opts=search_options(opt), seq_len=opt.seq_len, batch=opt.batch_size,
                            executor=executor)
    finally:
        executor.shutdown()
    meta = {"source": cfg.source.model, "source_arch": source.arch.label(), "family": source.family,
            "grid": opt.grid, "precision": opt.precision, "batch_size": opt.batch_size, "seq_len": opt.seq_len,
            "num_threads": opt.num_threads, "cpu": cpu_info()["model"], "hw": meter.hw, "exporter": EXPORTER,
            "onnx_recipe": meter.settings.recipe_key(),
            "warmup_runs": opt.warmup_runs, "timed_runs": opt.timed_runs, "error_estimator": opt.error_estimator,
            "error_steps": steps, "error_steps_rule": rule, "epsilon": opt.epsilon, "policy": opt.policy,
            "weights": opt.weights}
    metrics = write_outputs(folder, result, meta)
    metrics.update({"new_latency_measurements": meter.measured, "hardware_fingerprint": meter.hw,
                    "latency_cache": str(meter.cache.path)})
    if result.chosen is None:
        raise BortError(f"optimize: {result.choice_error} (every figure is in {folder}; a rerun with "
                        "another policy re-measures and retrains nothing)")
    log.info(f"optimize: chose {metrics['chosen']} ({metrics['chosen_latency_ms']:.2f} ms, "
          f"{metrics['speedup']:.2f}x the source's {metrics['source_latency_ms']:.2f} ms); report: "
          f"{folder / 'report.md'}")
    return write_manifest(run_dir, STAGE, cfg, fingerprint=fingerprint, metrics=metrics, started=started,
                          threads={"ort_intra_op": opt.num_threads, "ort_inter_op": 1,
                                   "error_workers": opt.workers})
