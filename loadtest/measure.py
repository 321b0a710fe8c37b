"""Measure services one after the other under identical Locust profiles, and assemble the results.

Used by ``bort loadtest`` (baseline then optimised) and by the benchmarks (any number of models).
Each service is started, driven at every user count, and stopped by process group before the next
one starts, so the models never compete for the CPU. Beside each Locust figure of an ONNX model
(a plan with a ``folder``): the batches the server formed in the measured window (its call log)
and the model's own throughput at those batches, raw onnxruntime in this process once the service
has stopped (:mod:`loadtest.ceiling`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bort.artifacts import cpu_info
from bort.processes import ServiceSpec, serving
from loadtest import ceiling, report
from loadtest.fleet import Fleet, run_fleet
from loadtest.locust_run import Profile, run_locust

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPlan:
    """A service to measure and what the report says about it."""

    role: str  # key in the results: baseline, optimized, or a bench name
    spec: ServiceSpec
    label: str
    speed_only: bool = False
    accuracy: float | None = None
    accuracy_note: str = ""
    scores: dict[str, float] | None = None  # every test metric of the served file (bort.metrics.METRICS)
    folder: Path | None = None  # the ONNX folder the service serves: its raw ceiling is measured beside it


@dataclass(frozen=True)
class CeilingSettings:
    """How the raw ceiling runs the model: the service's threads and truncation."""

    num_threads: int = 2
    max_seq_len: int = 128


def measure_model(plan: ModelPlan, profiles: list[Profile], texts_file: Path, raw_dir: Path,
                  server_cpus: set[int] | None = None, locust_cpus: set[int] | None = None,
                  bar: tqdm | None = None, ceiling_settings: CeilingSettings | None = None,
                  fleet: Fleet | None = None) -> dict[str, Any]:
    """Start the service, run each profile against it, stop it; the model's figures per user count
    (with `ceiling_settings` and a plan ``folder``: its batches and raw ceiling too; with a `fleet`,
    the load comes from a Locust master and its workers, and each worker's share is counted)."""
    levels: dict[str, Any] = {}
    call_log = raw_dir / f"{plan.role}_calls.csv"
    call_log.unlink(missing_ok=True)
    # absolute: the server runs in the package's directory, not the caller's (a relative run folder)
    spec = dataclasses.replace(plan.spec, env={**plan.spec.env, ceiling.CALL_LOG_ENV: str(call_log.resolve())})
    windows: dict[str, tuple[float, float]] = {}
    with serving(spec, raw_dir / f"{plan.role}_server.log", server_cpus) as running:
        ready_s = running.ready_s
        for profile in profiles:
            prefix = raw_dir / f"{plan.role}_u{profile.users}"
            cpu0 = running.cpu_s()
            started = time.time()
            if fleet is None:
                result = run_locust(plan.spec.port, profile, texts_file, prefix, locust_cpus, host=plan.spec.host)
            else:  # a master here and the fleet's workers (loadtest.workers)
                result = run_fleet(plan.spec.port, profile, texts_file, prefix, fleet, host=plan.spec.host)
            windows[str(profile.users)] = (started + profile.warmup_s, time.time())
            figures = report.summarize_run(prefix, profile.users, profile.duration_s)
            if fleet is not None:
                figures["workers"] = report.worker_shares(prefix)
            wall = max(result.wall_s, 1e-9)
            figures["server_cpu_share"] = round((running.cpu_s() - cpu0) / wall, 3)
            figures["locust_cpu_share"] = round(result.cpu_s / wall, 3)
            figures["locust_exit_code"] = result.returncode
            levels[str(profile.users)] = figures
            log.info("%s, %d users: %.1f req/s, p50 %s ms, p95 %s ms, %d/%d failed", plan.label, profile.users,
                     figures["rps"], figures["p50_ms"], figures["p95_ms"], figures["failures"], figures["requests"])
            if bar is not None:
                bar.update(1)
    if ceiling_settings is not None and plan.folder is not None:
        add_ceilings(levels, windows, call_log, plan.folder, texts_file, profiles, ceiling_settings)
    return {"label": plan.label, "speed_only": plan.speed_only, "accuracy": plan.accuracy,
            "accuracy_note": plan.accuracy_note, "scores": plan.scores, "ready_s": round(ready_s, 2), "levels": levels,
            "command": list(plan.spec.command)}


def add_ceilings(levels: dict[str, Any], windows: dict[str, tuple[float, float]], call_log: Path, folder: Path,
                 texts_file: Path, profiles: list[Profile], settings: CeilingSettings) -> None:
    """Each level's batches (from the call log, in its measured window) and its raw ceiling."""
    pool = json.loads(texts_file.read_text(encoding="utf-8"))
    items = pool.get("texts") or pool.get("pairs") or []
    per_request = {str(p.users): p.texts_per_request for p in profiles}
    for users, figures in levels.items():
        calls = ceiling.read_calls(call_log, *windows[users])
        figures["window"] = [round(t, 3) for t in windows[users]]  # the call log's lines of this run
        figures.update(ceiling.ceiling_figures(figures, calls, folder, items, num_threads=settings.num_threads,
                                               max_seq_len=settings.max_seq_len,
                                               texts_per_request=per_request[users]))
        log.info("%s users: %s texts per call on average, ceiling %s requests/s, served %s of it", users,
                 figures["batches"].get("mean_texts"), figures.get("ceiling_rps"), figures.get("served_fraction"))


def measure_all(plans: list[ModelPlan], profiles: list[Profile], texts_file: Path, raw_dir: Path,
                server_cpus: set[int] | None = None, locust_cpus: set[int] | None = None,
                ceiling_settings: CeilingSettings | None = None, fleet: Fleet | None = None) -> dict[str, Any]:
    """Every plan in order, each under the same profiles; ``{role: model figures}``."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    total_s = sum(p.run_time_s for p in profiles) * len(plans)
    models = {}
    with tqdm(total=len(plans) * len(profiles), desc=f"load test (~{total_s} s of traffic)", unit="run") as bar:
        for plan in plans:
            models[plan.role] = measure_model(plan, profiles, texts_file, raw_dir, server_cpus, locust_cpus, bar,
                                              ceiling_settings, fleet)
    return models


def assemble(models: dict[str, Any], profiles: list[Profile], conditions: dict[str, Any],
             slo: report.Slo, baseline: str = "baseline", optimized: str = "optimized",
             judging: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results document: models, ratios, headline, SLO verdict and the conditions they hold under.

    `judging` (the task's metric, its chance-corrected metric and the majority and stratified-random
    baselines on test) sits beside every accuracy figure, so no speed figure of a real model is read
    without knowing what a model that ignores its input would score."""
    ratios = report.compare(models[baseline]["levels"], models[optimized]["levels"])
    pair = {"baseline": models[baseline], "optimized": models[optimized]}
    missed = report.check_slo(pair, ratios, slo)
    configured = any(v > 0 for v in (slo.p95_ms, slo.min_speedup, slo.max_failure_ratio))
    return {
        "users": [p.users for p in profiles],
        "models": models,
        "ratios": ratios,
        "headline": report.headline(ratios),
        "judging": judging,
        "slo": {"configured": configured, "objectives": slo.__dict__, "missed": missed,
                "exit_code": report.SLO_EXIT_CODE if missed else 0},
        "conditions": {"cpu": cpu_info()["model"], "duration_s": profiles[0].duration_s,
                       "warmup_s": profiles[0].warmup_s, "mode": profiles[0].mode,
                       "texts_per_request": profiles[0].texts_per_request, **conditions},
    }
