"""Measure services one after the other under identical Locust profiles, and assemble the results.

Used by ``bort loadtest`` (baseline then optimised) and by ``bench/headline_speedup.py`` (any
number of models). Each service is started, driven at every user count, and stopped by process
group before the next one starts, so the models never compete for the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bort.artifacts import cpu_info
from bort.processes import ServiceSpec, serving
from loadtest import report
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


def measure_model(plan: ModelPlan, profiles: list[Profile], texts_file: Path, raw_dir: Path,
                  server_cpus: set[int] | None = None, locust_cpus: set[int] | None = None,
                  bar: tqdm | None = None) -> dict[str, Any]:
    """Start the service, run each profile against it, stop it; the model's figures per user count."""
    levels: dict[str, Any] = {}
    with serving(plan.spec, raw_dir / f"{plan.role}_server.log", server_cpus) as running:
        ready_s = running.ready_s
        for profile in profiles:
            prefix = raw_dir / f"{plan.role}_u{profile.users}"
            cpu0 = running.cpu_s()
            result = run_locust(plan.spec.port, profile, texts_file, prefix, locust_cpus)
            figures = report.summarize_run(prefix, profile.users, profile.duration_s)
            wall = max(result.wall_s, 1e-9)
            figures["server_cpu_share"] = round((running.cpu_s() - cpu0) / wall, 3)
            figures["locust_cpu_share"] = round(result.cpu_s / wall, 3)
            figures["locust_exit_code"] = result.returncode
            levels[str(profile.users)] = figures
            log.info("%s, %d users: %.1f req/s, p50 %s ms, p95 %s ms, %d/%d failed", plan.label, profile.users,
                     figures["rps"], figures["p50_ms"], figures["p95_ms"], figures["failures"], figures["requests"])
            if bar is not None:
                bar.update(1)
    return {"label": plan.label, "speed_only": plan.speed_only, "accuracy": plan.accuracy,
            "accuracy_note": plan.accuracy_note, "scores": plan.scores, "ready_s": round(ready_s, 2), "levels": levels,
            "command": list(plan.spec.command)}


def measure_all(plans: list[ModelPlan], profiles: list[Profile], texts_file: Path, raw_dir: Path,
                server_cpus: set[int] | None = None, locust_cpus: set[int] | None = None) -> dict[str, Any]:
    """Every plan in order, each under the same profiles; ``{role: model figures}``."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    total_s = sum(p.run_time_s for p in profiles) * len(plans)
    models = {}
    with tqdm(total=len(plans) * len(profiles), desc=f"load test (~{total_s} s of traffic)", unit="run") as bar:
        for plan in plans:
            models[plan.role] = measure_model(plan, profiles, texts_file, raw_dir, server_cpus, locust_cpus, bar)
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
