"""``bort optimize``: search the Pareto front of sub-architectures of the source on this CPU.

Reads like the method (method.md §2): resolve the source and the grid; prepare the error estimate
(the teacher's outputs cached once per corpus); measure latency (cached per hardware
fingerprint); estimate error per candidate (stored per candidate in the run folder); run the
FPTAS; write every candidate, the front, the chosen shape, the report, the plot and the manifest.
A killed run, rerun, continues: nothing measured or trained is done again.

Error steps per candidate: ``optimize.error_steps`` when set, else
``ceil(error_steps_scale / (epsilon * interval ** 1.5))`` — the paper's per-candidate term
``1 / (ε · s^{3/2})`` scaled by a constant (defaults: ε 0.1, s 4, scale 8 -> 10 steps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
from bort.errors import BortError
from bort.families import Arch, Source, Vocab, count_params, resolve_source
from optimize.executor import make_executor
from optimize.grid import make_grid
from optimize.latency import JsonlStore, LatencyMeter, LatencySettings
from optimize.report import write_outputs
from optimize.search import SearchOptions, run_search
from optimize.timing import EXPORTER

log = logging.getLogger(__name__)
STAGE = "optimize"


def error_steps(opt: Any) -> tuple[int, str]:
    """Steps per candidate, and the rule that gave them (for the report)."""
    if opt.error_steps:
        return opt.error_steps, "optimize.error_steps"
    steps = math.ceil(opt.error_steps_scale / (opt.epsilon * opt.interval ** 1.5))
    return steps, (f"ceil({opt.error_steps_scale:g} / (ε={opt.epsilon:g} · s={opt.interval:g}^1.5))")


class ProxyError:
    """Size-only stand-in for ê: log(source encoder params / candidate encoder params).

    For speed-only searches (``optimize.error_estimator=proxy``); it says nothing about accuracy.
    """

    def __init__(self, source: Source):
        self.family, self.vocab = source.family, Vocab.from_config(source.config)
        self.reference = count_params(source.arch, self.family, self.vocab)["effective"]

    def __call__(self, arch: Arch) -> float:
        return math.log(self.reference / count_params(arch, self.family, self.vocab)["effective"])


class DistillError:
    """ê from the shared distillation loop, :func:`optimize.distill.estimate_error`.

    Holds only picklable state so a process pool (``optimize.workers > 1``) can run it; each
    process loads the teacher cache once from its file.
    """

    def __init__(self, cfg: Any, source: Source, texts: tuple[list[str], list[str]], steps: int):
        self.cfg, self.source, self.texts, self.steps = cfg, source, texts, steps
        self._cache = None

    def teacher_cache(self) -> Any:
        if self._cache is None:
            from bort.assets import cache_dir
            from optimize.teacher_cache import TeacherCache

            # As many training batches as a candidate takes steps (at least 8); 4 held-out
            # batches: every candidate is scored on the same ones, so the comparison is paired.
            self._cache = TeacherCache.for_config(self.cfg, cache_dir() / "teacher", *self.texts,
                                                  n_batches=min(32, max(8, self.steps)), n_heldout_batches=4)
        return self._cache

    def __call__(self, arch: Arch) -> float:
        from optimize import distill

        return float(distill.estimate_error(self.source, arch, self.cfg, self.teacher_cache(), self.steps,
                                            self.cfg.seed))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}


def make_error_fn(cfg: Any, source: Source, run_dir: Path, steps: int) -> Any:
    """The configured ê; for ``distill``, the corpus is read and the teacher cache built now
    (before any latency is timed: phases never overlap)."""
    if cfg.optimize.error_estimator == "proxy":
        return ProxyError(source)
    try:
        from optimize import distill  # noqa: F401 - checked here so a missing module fails early
        from optimize.teacher_cache import TeacherCache  # noqa: F401
    except ImportError as e:
        raise BortError(f"optimize.error_estimator=distill needs optimize.distill ({e}); "
                        "set optimize.error_estimator=proxy for a speed-only search") from e
    from bort.corpus import corpus_texts
    from bort.data import prepare

    texts = corpus_texts(cfg, prepare(cfg, run_dir))
    fn = DistillError(cfg, source, texts, steps)
    fn.teacher_cache()
    return fn


def error_key(cfg: Any, steps: int) -> str:
    """What a stored ê depends on: source, task, corpus, the error settings, the student's init."""
    opt, pre = cfg.optimize, cfg.pretrain
    data = {"base": cfg.section_fingerprint("source", "task", "corpus"), "steps": steps,
            "estimator": opt.error_estimator, "lr": opt.error_lr, "clip": opt.weight_clip,
            "batch": opt.error_batch_size, "seq": opt.error_seq_len,
            "init": getattr(pre, "init", None), "layers": getattr(pre, "layer_selection", None),
            "wd": getattr(pre, "weight_decay", None), "grad_clip": getattr(pre, "grad_clip", None)}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def search_options(opt: Any) -> SearchOptions:
    return SearchOptions(epsilon=opt.epsilon, max_measured=opt.max_measured, policy=opt.policy,
                         latency_budget_ms=opt.latency_budget_ms, speedup_target=opt.speedup_target,
                         weights=opt.weights, prune_factor=opt.prune_factor,
                         error_time_budget_s=opt.error_time_budget_s, error_seq_len=opt.error_seq_len,
                         inversion_tolerance=opt.inversion_tolerance, workers=opt.workers)


def run(cfg: Any, run_dir: str | Path, args: Any = None) -> Manifest:
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
    error_fn = make_error_fn(cfg, source, run_dir, steps)
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
