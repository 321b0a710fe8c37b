"""``bort optimize``: search the Pareto front of sub-architectures of the source on this CPU.

Reads like the method (method.md §2): resolve the source and the grid; prepare the error estimate
(the teacher's outputs cached once per corpus); measure latency (cached per hardware
fingerprint); estimate error per candidate (stored per candidate in the run folder); run the
FPTAS; write every candidate, the front, the chosen shape, the report, the plot and the manifest.
A killed run, rerun, continues: nothing measured or trained is done again. The error estimate
is :mod:`optimize.error`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from bort.artifacts import (
    Manifest,
    busy_warning,
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
from bort.families import Source, Vocab, resolve_source
from optimize import cluster, served
from optimize.error import error_key, error_steps, make_error_fn
from optimize.executor import in_flight, make_executor, resolve_kind
from optimize.grid import make_grid
from optimize.latency import JsonlStore, LatencyMeter, LatencySettings
from optimize.precision import search_precision
from optimize.report import write_outputs
from optimize.search import SearchOptions, run_search
from optimize.timing import EXPORTER

log = logging.getLogger(__name__)
STAGE = "optimize"


def latency_function(cfg: RunConfig, source: Source, task: Any) -> tuple[Any, LatencyMeter, dict[str, Any]]:
    """The search's latency: the model's (``optimize.objective=model``, at ``optimize.seq_len``) or the
    predicted served latency (``served``: the model at the task's median length plus the service's
    fixed cost, measured once on this machine; :mod:`optimize.served`)."""
    opt = cfg.optimize
    warning = busy_warning("the latencies the search measures and caches for this machine")
    if warning:
        log.warning("%s; run `bort optimize` on a quiet machine (cached figures are reused: remove "
                    "$BORT_CACHE/latency to measure again)", warning)
    texts = [e.text if e.text_pair is None else (e.text, e.text_pair) for e in task.train]
    precision, decision = search_precision(opt, source, texts, cfg.seed)  # optimize.precision=auto resolved
    settings = LatencySettings.from_config(opt, precision)
    chosen = {"precision": precision, "precision_decision": decision}
    if opt.objective == "model":
        meter = LatencyMeter(source.family, settings, base_config=source.config, seed=cfg.seed, reference=source.arch)
        return meter, meter, {"objective": "model", **chosen}
    from bort.assets import cache_dir
    from bort.families import load_tokenizer

    length = served.median_length(load_tokenizer(source.folder), texts, opt.seq_len, seed=cfg.seed)
    settings = dataclasses.replace(settings, seq_len=length)
    meter = LatencyMeter(source.family, settings, base_config=source.config, seed=cfg.seed, reference=source.arch)
    cost = served.fixed_cost(source, [e.text for e in task.train], opt.num_threads, cache_dir() / "latency",
                             meter.hw, seed=cfg.seed)
    meta = {"objective": "served", "median_tokens": length, "fixed_ms": cost.fixed_p50_ms,
            "fixed_cost": dataclasses.asdict(cost), **chosen}
    return served.ServedLatency(meter, cost.fixed_p50_ms), meter, meta


def ray_session(opt: Any) -> Any:
    """Ray for ``optimize.executor=ray``: the cluster at ``optimize.ray_address``, or a local instance
    whose node offers the latency resource (so it is its own target)."""
    from bort.cluster import connected

    resources = {opt.latency_resource: 1.0} if opt.latency_resource else None
    return connected(opt.ray_address, "optimize.executor", resources=resources)


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
    task = load_prepared(run_dir)
    corpus = corpus_texts(cfg, task) if opt.error_estimator == "distill" else ([], [])
    error_fn = make_error_fn(cfg, source, corpus, steps)
    with contextlib.ExitStack() as stack:
        ray = stack.enter_context(ray_session(opt)) if resolve_kind(opt.executor, opt.workers) == "ray" else None
        if ray is not None and opt.latency_resource:  # measured on the serving node (optimize/cluster.py)
            latency_fn = cluster.target_latency(ray, cfg, source, task)
            served_meta = latency_fn.meta
        else:
            latency_fn, meter, served_meta = latency_function(cfg, source, task)
        executor = make_executor(opt.workers, opt.executor, ray, opt.ray_cpus_per_task)
        stack.callback(executor.shutdown)
        if ray is not None:
            error_fn = cluster.portable(error_fn, opt.ray_cpus_per_task)
        result = run_search(archs, family=source.family, vocab=Vocab.from_config(source.config),
                            source_arch=source.arch, latency_fn=latency_fn, error_fn=error_fn,
                            store=JsonlStore(folder / "errors.jsonl"), error_key=error_key(cfg, steps),
                            opts=dataclasses.replace(search_options(opt), workers=in_flight(executor, opt.workers)),
                            seq_len=opt.seq_len, batch=opt.batch_size, executor=executor)
        if isinstance(latency_fn, cluster.TargetLatency):
            meter = latency_fn.meter  # the target's figures, read before the actor goes
    meta = {"source": cfg.source.model, "source_arch": source.arch.label(), "family": source.family,
            "grid": opt.grid, "precision": opt.precision, "batch_size": opt.batch_size,
            "seq_len": meter.settings.seq_len, **served_meta,
            "num_threads": opt.num_threads, "cpu": cpu_info()["model"], "hw": meter.hw, "exporter": EXPORTER,
            "onnx_recipe": meter.settings.recipe_key(),
            "warmup_runs": opt.warmup_runs, "timed_runs": opt.timed_runs, "error_estimator": opt.error_estimator,
            "error_steps": steps, "error_steps_rule": rule, "epsilon": opt.epsilon, "policy": opt.policy,
            "weights": opt.weights}
    metrics = write_outputs(folder, result, meta)
    metrics.update({"new_latency_measurements": meter.measured, "hardware_fingerprint": meter.hw,
                    "latency_cache": str(meter.cache.path), "latency_ray_node": getattr(meter, "node_id", None)})
    if result.chosen is None:
        raise BortError(f"optimize: {result.choice_error} (every figure is in {folder}; a rerun with "
                        "another policy re-measures and retrains nothing)")
    log.info("optimize: chose %s (%s latency %.2f ms, %.2fx the source's %.2f ms); report: %s",
             metrics["chosen"], opt.objective, metrics["chosen_latency_ms"], metrics["speedup"],
             metrics["source_latency_ms"], folder / "report.md")
    return write_manifest(run_dir, STAGE, cfg, fingerprint=fingerprint, metrics=metrics, started=started,
                          threads={"ort_intra_op": opt.num_threads, "ort_inter_op": 1,
                                   "error_workers": opt.workers, "error_executor": opt.executor})
