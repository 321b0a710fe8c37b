"""``bort loadtest``: Locust against the baseline service, then the optimised one, on 127.0.0.1.

Both services are started the same way (``bort serve`` as a subprocess in its own process group,
the same ``serve`` settings and threads, the same CPU set), driven by identical bounded Locust
profiles (``loadtest.users`` x ``loadtest.duration_s`` after ``loadtest.warmup_s`` of warm-up),
and stopped by process group whatever happens. Baselines (``loadtest.baseline``):

- ``source_onnx``: the labeller (the source model fine-tuned on the task) as exported to ONNX
  fp32, served by the same server code;
- ``source_deployed``: the labeller at the precision ``bort export`` deployed for it on this CPU
  (int8 where that is accurate and faster): like for like with the student;
- ``source_torch``: the same labeller served in PyTorch (:mod:`loadtest.torch_service`);
- ``shape:L/A/H/I``: an architecture at random weights, ONNX fp32: **speed only**.

Outputs in ``run_dir/loadtest/``: ``report.md``, ``report.html``, ``latency.png``, ``rps.png``,
``results.json``, Locust's raw CSVs and logs under ``raw/``, and the manifest.

Exit code: the stage returns :data:`loadtest.report.SLO_EXIT_CODE` (3) when a configured SLO
(``loadtest.slo_p95_ms``, ``slo_min_speedup``, ``slo_max_failure_ratio``) is missed; the report is
written either way.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import (
    Manifest,
    atomic_write_json,
    is_up_to_date,
    read_manifest,
    stage_dir,
    stage_fingerprint,
    write_manifest,
)
from bort.config import RunConfig
from bort.errors import ConfigError
from bort.processes import parse_cpus
from loadtest import render, report
from loadtest.fleet import fleet_session
from loadtest.locust_run import Profile
from loadtest.measure import CeilingSettings, ModelPlan, assemble, measure_all

log = logging.getLogger(__name__)

STAGE = "loadtest"
UPSTREAM = ("finetune", "export")


def run(cfg: RunConfig, run_dir: Path, args: Any = None) -> Manifest | int:
    """Load-test baseline and optimised services; write the report; SLO verdict as exit code."""
    started, run_dir = time.time(), Path(run_dir)
    upstream = {name: read_manifest(run_dir, name) for name in UPSTREAM}
    fingerprint = stage_fingerprint(cfg, STAGE, upstream={n: m.fingerprint for n, m in upstream.items()})
    if is_up_to_date(run_dir, STAGE, fingerprint):
        log.info("loadtest is up to date (%s); nothing to do", fingerprint)
        return verdict(read_manifest(run_dir, STAGE))
    out = fresh_stage_dir(run_dir)
    texts_file = write_request_texts(cfg, run_dir, out / "raw" / "texts.json")
    plans = plan_services(cfg, run_dir, out, upstream)
    profiles = make_profiles(cfg)
    server_cpus, locust_cpus = parse_cpus(cfg.loadtest.server_cpus), parse_cpus(cfg.loadtest.locust_cpus)
    with fleet_session(cfg.loadtest) as fleet:  # loadtest.workers: a Locust master here and its workers
        models = measure_all(plans, profiles, texts_file, out / "raw", server_cpus, locust_cpus,
                             CeilingSettings(cfg.serve.num_threads, cfg.serve.max_seq_len), fleet)
    from loadtest.services import judging

    results = assemble(models, profiles, conditions(cfg, texts_file), slo_of(cfg),
                       judging=judging(upstream["finetune"]))
    atomic_write_json(out / "results.json", results)
    render.write_report(results, out, out / "raw")
    manifest = write_manifest(run_dir, STAGE, cfg, fingerprint=fingerprint, metrics=manifest_metrics(results),
                              inputs={n: m.fingerprint for n, m in upstream.items()}, started=started,
                              threads={"server": cfg.serve.num_threads})
    print(summary_line(results, out))
    return verdict(manifest)


def fresh_stage_dir(run_dir: Path) -> Path:
    """The stage folder without a previous run's manifest and raw files (never half old, half new)."""
    out = stage_dir(run_dir, STAGE)
    (out / "manifest.json").unlink(missing_ok=True)
    shutil.rmtree(out / "raw", ignore_errors=True)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    return out


def write_request_texts(cfg: RunConfig, run_dir: Path, path: Path) -> Path:
    """The request pool: up to ``loadtest.max_texts`` test texts, a seeded uniform sample (so the
    lengths keep their real distribution), with the label set the answers are checked against."""
    from bort import data

    task = data.load_prepared(run_dir)
    rng = np.random.default_rng(cfg.seed)
    examples = list(task.test)
    if cfg.loadtest.max_texts and len(examples) > cfg.loadtest.max_texts:
        keep = rng.choice(len(examples), size=cfg.loadtest.max_texts, replace=False)
        examples = [examples[i] for i in sorted(keep)]
    if task.is_pair:
        payload = {"pairs": [[e.text, e.text_pair] for e in examples], "labels": task.labels}
    else:
        payload = {"texts": [e.text for e in examples], "labels": task.labels}
    atomic_write_json(path, payload)
    return path


CLIENTS = {"fast": "Locust FastHttpUser (geventhttpclient)", "requests": "Locust HttpUser (python-requests)"}


def make_profiles(cfg: RunConfig) -> list[Profile]:
    """One identical profile per user count (used for every model)."""
    lt = cfg.loadtest
    return [Profile(users=u, duration_s=lt.duration_s, warmup_s=lt.warmup_s, mode=lt.mode,
                    target_rps=lt.target_rps, think_time_s=lt.think_time_s,
                    texts_per_request=lt.texts_per_request, seed=cfg.seed, grace_s=lt.grace_s,
                    client=lt.client)
            for u in lt.users]


def slo_of(cfg: RunConfig) -> report.Slo:
    lt = cfg.loadtest
    return report.Slo(p95_ms=lt.slo_p95_ms, min_speedup=lt.slo_min_speedup,
                      max_failure_ratio=lt.slo_max_failure_ratio)


def conditions(cfg: RunConfig, texts_file: Path) -> dict[str, Any]:
    import json

    pool = json.loads(texts_file.read_text(encoding="utf-8"))
    return {"server": "BentoML via `bort serve` (PyTorch baseline: BentoML, same worker count)",
            "num_threads": cfg.serve.num_threads, "server_cpus": cfg.loadtest.server_cpus or "all",
            "locust_cpus": cfg.loadtest.locust_cpus or "all", "client": CLIENTS[cfg.loadtest.client],
            "load_generators": (f"{cfg.loadtest.workers} Locust workers ({cfg.loadtest.executor}) and a master"
                                if cfg.loadtest.workers else "one Locust process"),
            "texts": len(pool.get("texts") or pool.get("pairs") or []), "baseline": cfg.loadtest.baseline}


# -- the services --------------------------------------------------------------------------------
def plan_services(cfg: RunConfig, run_dir: Path, out: Path, upstream: dict[str, Manifest]) -> list[ModelPlan]:
    """[baseline, optimised]: how to start each and what the report says about it."""
    from bort import data
    from loadtest import services as S

    task = data.load_prepared(run_dir)
    config_file = S.write_config(cfg, out / "raw" / "serve_config.yaml")
    acc = S.accuracies(upstream["finetune"], upstream["export"])
    port, timeout = cfg.loadtest.port, cfg.loadtest.start_timeout_s
    optimized = ModelPlan(
        role="optimized", label=f"optimised ({acc['optimized_name']}, ONNX {acc['optimized_precision']})",
        spec=S.bort_serve_spec("optimized", port, config_file, timeout, run_dir=run_dir, role="optimized",
                               host=cfg.loadtest.host),
        accuracy=acc["optimized"], accuracy_note=acc["optimized_note"], scores=acc["optimized_scores"],
        folder=S.deployed_folder(upstream["export"], "optimized"))
    baseline = cfg.loadtest.baseline
    if baseline == "source_onnx":
        folder = upstream["export"].dir / "baseline" / "fp32"
        plan = ModelPlan(role="baseline", label="source (labeller, ONNX fp32)",
                         spec=S.folder_spec("baseline", folder, port, config_file, timeout, host=cfg.loadtest.host),
                         accuracy=acc["labeller"], accuracy_note=acc["labeller_note"], scores=acc["labeller_scores"],
                         folder=folder)
    elif baseline == "source_deployed":  # like for like: the labeller at the precision export deployed for it
        folder = S.deployed_folder(upstream["export"], "baseline")
        precision = acc["labeller_deployed_precision"]
        plan = ModelPlan(role="baseline", label=f"source (labeller, ONNX {precision})",
                         spec=S.folder_spec("baseline", folder, port, config_file, timeout, host=cfg.loadtest.host),
                         accuracy=acc["labeller_deployed"],
                         accuracy_note=f"labeller test accuracy as served (ONNX {precision})",
                         scores=acc["labeller_deployed_scores"], folder=folder)
    elif baseline == "source_torch":
        if task.is_pair:
            raise ConfigError("loadtest.baseline=source_torch serves single-text tasks only; "
                              "use source_onnx for a text-pair task")
        folder = upstream["finetune"].dir / "models" / "labeller"
        plan = ModelPlan(role="baseline", label="source (labeller, PyTorch fp32)",
                         spec=S.torch_spec(folder, cfg, port, timeout, labels=list(task.labels)),
                         accuracy=acc["labeller_pytorch"], accuracy_note="labeller test accuracy (PyTorch)",
                         scores=acc["labeller_pytorch_scores"])
    else:
        plan = S.shape_plan(baseline.split(":", 1)[1], "fp32", task.labels, cfg, port, config_file, timeout)
    return [plan, optimized]


# -- results -------------------------------------------------------------------------------------
def manifest_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """Headline figures first (what `bort run`'s report reads), then every model at every user count."""
    models = results["models"]
    keep = ("rps", "p50_ms", "p95_ms", "p99_ms", "failures", "requests", "failure_ratio")
    return {
        "baseline": models["baseline"]["label"],
        "optimized": models["optimized"]["label"],
        **results["headline"],
        "failures": sum(lv["failures"] for m in models.values() for lv in m["levels"].values()),
        "ratios": results["ratios"],
        "models": {role: {users: {k: lv[k] for k in keep} for users, lv in m["levels"].items()}
                   for role, m in models.items()},
        "accuracy": {role: m["accuracy"] for role, m in models.items()},
        "scores": {role: m.get("scores") for role, m in models.items()},
        "judging": results.get("judging"),
        "speed_only": {role: m["speed_only"] for role, m in models.items()},
        "slo": results["slo"],
    }


def verdict(manifest: Manifest) -> Manifest | int:
    """The manifest, or the SLO exit code when a configured objective was missed."""
    slo = manifest.metrics.get("slo", {})
    for line in slo.get("missed", []):
        log.error("SLO missed: %s", line)
    return report.SLO_EXIT_CODE if slo.get("missed") else manifest


def summary_line(results: dict[str, Any], out: Path) -> str:
    top, slo = results["headline"], results["slo"]
    failures = sum(lv["failures"] for m in results["models"].values() for lv in m["levels"].values())
    text = (f"loadtest: {results['models']['optimized']['label']} vs {results['models']['baseline']['label']}: "
            f"{top['rps_ratio']}x requests/s at {top['rps_ratio_users']} users, {top['p50_ratio']}x lower p50 "
            f"at {top['p50_ratio_users']}; {failures} failed requests; report {out / 'report.md'}")
    if slo["missed"]:
        text += f"\nSLO missed (exit code {slo['exit_code']}): " + "; ".join(slo["missed"])
    return text

