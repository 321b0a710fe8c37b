"""``bort export``: the fine-tuned classifiers to ONNX (fp32, dynamic and static int8), checked and timed.

The graphs are :mod:`runtime.recipe`'s, the same the search timed for the chosen shape.

Two roles are exported from the finetune stage's models:

- ``optimized``: the model the finetune manifest names in ``metrics["deploy"]`` (e.g. ``agora``);
- ``baseline``: the labeller, i.e. the source model fine-tuned on the task, which the load test
  compares against.

Output: ``run_dir/export/<role>/<precision>/`` (``fp32``, ``int8``, ``int8_static``: self-contained
folders the service loads), ``deployed.json`` (which precision serves each role, and why), and the
manifest, whose metrics carry the parity figure, each variant's dev accuracy and drop against fp32
(dev decides what is served), test accuracy (reported, never used to decide), latency at
``export.seq_len`` tokens, and the speed comparison on this CPU that decided the deployed precision
(:mod:`serve.precision`: int8 is deployed only when accurate enough *and* faster here).
The deployed folders are also registered in the BentoML model store (``$BENTOML_HOME``) as
``bort-<role>:<fingerprint>``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bort import metrics
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
from bort.errors import ArtifactError, BortError, ConfigError
from runtime import recipe
from serve import onnx_export as X
from serve import precision as P

log = logging.getLogger(__name__)

ROLES = ("optimized", "baseline")
DEPLOYED_FILE = "deployed.json"


def run(cfg: RunConfig, run_dir: Path, args: Any = None) -> Manifest:
    """Export, check, time and register both roles; write the export manifest last."""
    started = time.time()
    upstream = read_manifest(run_dir, "finetune")
    fingerprint = stage_fingerprint(cfg, "export", upstream={"finetune": upstream.fingerprint})
    if is_up_to_date(run_dir, "export", fingerprint):
        log.info("export is up to date (%s); nothing to do", fingerprint)
        return read_manifest(run_dir, "export")
    gate = check_gate(cfg, upstream)
    task = load_task(cfg, run_dir)
    sources = role_sources(upstream)
    target, why = recipe.quantization_target(cfg.export.quantization)
    log.info("int8 quantisation target: %s (%s)", target, why)
    out_root = stage_dir(run_dir, "export")
    out_root.mkdir(parents=True, exist_ok=True)
    roles = {role: export_role(role, name, folder, out_root, task, cfg.export, target, cfg.seed, cfg.serve)
             for role, (name, folder) in sources.items()}
    deployed = {role: deployment_entry(role, m, fingerprint) for role, m in roles.items()}
    atomic_write_json(out_root / DEPLOYED_FILE, deployed)
    registered = register_bentoml(out_root, deployed, fingerprint, roles) if cfg.export.register_bentoml else {}
    metrics = summary_metrics(roles, target, why, registered)
    metrics.update(gate=gate, baselines=upstream.metrics.get("baselines"), metric=upstream.metrics.get("metric"),
                   chance_metric=upstream.metrics.get("chance_metric"))
    manifest = write_manifest(run_dir, "export", cfg, fingerprint=fingerprint, metrics=metrics,
                              inputs={"finetune": upstream.fingerprint}, started=started,
                              threads={"onnxruntime_intra_op": cfg.export.num_threads})
    print(report_line(metrics))
    return manifest


class DeployGateError(BortError):
    """The student the finetune stage chose did not learn enough to ship (see :func:`check_gate`)."""


def check_gate(cfg: RunConfig, finetune: Manifest) -> dict[str, Any]:
    """The deploy gate: the chosen student must beat the majority baseline on dev, on the task's metric,
    by ``export.gate_margin_points`` and beyond chance (``export.gate_alpha``), unless ``export.force``.

    Raises:
        DeployGateError: the student failed and ``export.force`` is off (nothing is exported).
        ArtifactError: the finetune manifest predates the gate's facts (rerun `bort finetune`).
    """
    ec = cfg.export
    verdict = metrics.deploy_verdict(finetune.metrics, ec.gate_margin_points, ec.gate_alpha)
    if verdict["passed"] is None:
        raise ArtifactError(verdict["text"])
    forced = not verdict["passed"] and ec.force
    if not verdict["passed"] and not forced:
        raise DeployGateError(f"deploy gate: {verdict['text']}: nothing was exported; "
                              f"{metrics.gate_advice(verdict['metric'])}")
    if forced:
        log.warning("deploy gate failed (%s); exporting anyway because export.force is set", verdict["text"])
    return {**verdict, "forced": forced}


def load_task(cfg: RunConfig, run_dir: Path) -> Any:
    """The task's labels and dev split (``bort.data``), for the checks."""
    from bort import data

    return data.load_prepared(run_dir)


def role_sources(upstream: Manifest) -> dict[str, tuple[str, Path]]:
    """``{role: (finetune model name, folder)}`` from the finetune manifest."""
    deploy = upstream.metrics.get("deploy")
    models = upstream.dir / "models"
    if not deploy:
        raise ArtifactError(f"{upstream.path} names no model to deploy (metrics.deploy); rerun `bort finetune`")
    out = {"optimized": (str(deploy), models / str(deploy)), "baseline": ("labeller", models / "labeller")}
    for role, (name, folder) in out.items():
        if not (folder / "config.json").is_file():
            raise ArtifactError(f"{folder} (the {role} model, {name}) is missing; rerun `bort finetune`")
    return out


def export_role(role: str, source: str, model_dir: Path, out_root: Path, task: Any, ec: Any,
                target: str, seed: int = 0, serve_cfg: Any = None) -> dict[str, Any]:
    """fp32 export + parity + accuracy + latency, then each int8 variant, then the measured decision.

    Builds into a hidden temporary folder and moves it into place at the end, so an interrupted
    export never leaves a half-written ``<role>/`` folder behind.
    """
    tmp = out_root / f".tmp-{role}"
    shutil.rmtree(tmp, ignore_errors=True)
    labels = X.labels_of(model_dir, list(task.labels))
    sidecar = {"labels": labels, "is_pair": bool(task.is_pair), "max_seq_len": X.model_max_seq_len(model_dir)}
    timing = {"seq_len": ec.seq_len, "num_threads": ec.num_threads, "warmup_runs": ec.warmup_runs,
              "timed_runs": ec.timed_runs}

    fp32 = tmp / "fp32"
    recipe.export_fp32(model_dir, fp32, ec.optimize_graph)
    recipe.write_serving(fp32, precision="fp32", name=f"{role}:{source}:fp32", **sidecar)
    probe = task.dev[:ec.parity_texts]
    pairs = [(e.text, e.text_pair) for e in probe] if task.is_pair else None
    m: dict[str, Any] = {"source": source, "labels": labels, "graph_optimized": ec.optimize_graph}
    m.update(X.check_parity(model_dir, fp32, [e.text for e in probe], pairs, ec.seq_len, ec.parity_atol))
    evaluate = {"num_threads": ec.num_threads, "seq_len": ec.seq_len, "batch_size": ec.eval_batch_size,
                "task_labels": list(task.labels)}
    m["fp32_dev_accuracy"] = X.split_accuracy(fp32, task.dev, task.is_pair, desc=f"{role} fp32 dev", **evaluate)
    # Reported only, never used to decide: what users get from the served file on the untouched split.
    m["test_scores"] = {"fp32": X.split_scores(fp32, task.test, task.is_pair, desc=f"{role} fp32 test",
                                               **evaluate)}
    m["latency_ms"] = {"fp32": X.measure_latency(fp32, **timing)}
    m["size_mb"] = {"fp32": X.onnx_size_mb(fp32)}
    m["deployed_precision"], m["decision"] = "fp32", "export.quantize is false"

    if ec.quantize:
        folders, calibration = build_int8(fp32, tmp, task, ec, target, seed)
        folders = {"fp32": fp32, **folders}
        m["dev_accuracy"], m["drop_points"] = {"fp32": m["fp32_dev_accuracy"]}, {}
        for precision, folder in folders.items():
            if precision == "fp32":
                continue
            recipe.write_serving(folder, precision=precision, name=f"{role}:{source}:{precision}",
                                 quantization=recipe.QUANTIZATION[precision], **sidecar)
            acc = X.split_accuracy(folder, task.dev, task.is_pair, desc=f"{role} {precision} dev", **evaluate)
            if precision == "int8_static":
                m["static_recipe"] = "weight MatMuls, per-channel"
                if (m["fp32_dev_accuracy"] - acc) * 100.0 > ec.max_int8_drop_points:
                    # The FFN output projections' inputs (after GELU) hold outliers: keep them fp32, try again.
                    log.info("%s: static int8 drops %.2f dev points; rebuilding it with the FFN output projections "
                             "in fp32", role, (m["fp32_dev_accuracy"] - acc) * 100.0)
                    shutil.rmtree(folder)
                    recipe.quantize_static_int8(fp32, folder, target, ec.optimize_graph, calibration,
                                                keep_ffn_output_fp32=True)
                    recipe.write_serving(folder, precision=precision, name=f"{role}:{source}:{precision}",
                                         quantization="static", **sidecar)
                    m["static_recipe"] += f" ({(m['fp32_dev_accuracy'] - acc) * 100.0:.2f} points lost); then FFN " \
                                          "output projections kept fp32"
                    acc = X.split_accuracy(folder, task.dev, task.is_pair, desc=f"{role} {precision} dev", **evaluate)
            m["dev_accuracy"][precision] = acc
            m["drop_points"][precision] = round((m["fp32_dev_accuracy"] - acc) * 100.0, 3)
            m["test_scores"][precision] = X.split_scores(folder, task.test, task.is_pair,
                                                         desc=f"{role} {precision} test", **evaluate)
            m["latency_ms"][precision] = X.measure_latency(folder, **timing)
            m["size_mb"][precision] = X.onnx_size_mb(folder)
        m["int8_dev_accuracy"], m["int8_drop_points"] = m["dev_accuracy"]["int8"], m["drop_points"]["int8"]
        workload = P.task_workload(fp32, task.dev, ec.seq_len, ec.speed_batch, seed)
        requests = [[e.text, e.text_pair] if task.is_pair else e.text for e in task.dev]
        m["speed"] = P.decide(ec, folders, m["drop_points"], workload, serve_cfg, requests)
        m["deployed_precision"], m["decision"] = m["speed"]["precision"], m["speed"]["why"]
        log.info("%s: %s", role, P.summary(m["speed"]))
    elif ec.precision not in ("auto", "fp32"):
        raise ConfigError(f"export.precision={ec.precision} needs export.quantize=true")
    m["test_accuracy"] = {p: scores["accuracy"] for p, scores in m["test_scores"].items()}
    final = out_root / role
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    log.info("%s (%s): parity %.2e, fp32 acc %.4f, deployed %s", role, source, m["parity_max_abs_diff"],
             m["fp32_dev_accuracy"], m["deployed_precision"])
    return m


def build_int8(fp32: Path, tmp: Path, task: Any, ec: Any, target: str, seed: int) -> tuple[dict[str, Path], list]:
    """The int8 variants of `fp32`: dynamic always, static (calibrated on ``export.calibration_texts``
    training texts) when ``export.static_int8``; and those calibration feeds."""
    folders = {"int8": recipe.quantize_int8(fp32, tmp / "int8", target, ec.optimize_graph)}
    calibration: list = []
    if ec.precision == "int8_static" and not ec.static_int8:
        raise ConfigError("export.precision=int8_static needs export.static_int8=true")
    if ec.static_int8:
        if not task.train:
            raise ArtifactError("the task has no training texts to calibrate static int8 on; rerun `bort data`"
                                " or set export.static_int8=false")
        calibration = P.calibration_feeds(fp32, task.train, ec.calibration_texts, ec.seq_len, seed)
        folders["int8_static"] = recipe.quantize_static_int8(fp32, tmp / "int8_static", target, ec.optimize_graph,
                                                             calibration)
    return folders, calibration


def int8_decision(drop_points: float, max_drop_points: float) -> tuple[str, str]:
    """Serve int8 unless it costs more than ``max_drop_points`` of dev accuracy."""
    if drop_points <= max_drop_points:
        return "int8", f"int8 dev accuracy drop {drop_points:.2f} points <= {max_drop_points}"
    return "fp32", (f"int8 dev accuracy drop {drop_points:.2f} points > export.max_int8_drop_points="
                    f"{max_drop_points}: keeping fp32 for deployment")


def deployment_entry(role: str, m: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """One role's line in ``deployed.json``."""
    precision = m["deployed_precision"]
    return {"folder": f"{role}/{precision}", "precision": precision, "source": m["source"],
            "decision": m["decision"], "bentoml_tag": f"bort-{role}:{fingerprint}"}


def register_bentoml(out_root: Path, deployed: dict[str, Any], fingerprint: str,
                     roles: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Copy each deployed folder into the BentoML model store; labels carry fingerprint and metrics."""
    import bentoml
    from bentoml.exceptions import NotFound

    tags = {}
    for role, entry in deployed.items():
        m = roles[role]
        labels = {"run_fingerprint": fingerprint, "role": role, "source": m["source"],
                  "precision": entry["precision"], "parity_max_abs_diff": f"{m['parity_max_abs_diff']:.3g}",
                  "fp32_dev_accuracy": f"{m['fp32_dev_accuracy']:.4f}",
                  "int8_drop_points": str(m.get("int8_drop_points", "n/a")),
                  "p50_ms": str(m["latency_ms"][entry["precision"]]["p50"])}
        try:  # the tag is the fingerprint: re-exporting the same run replaces its entry
            bentoml.models.delete(entry["bentoml_tag"])
        except NotFound:
            pass
        with bentoml.models.create(entry["bentoml_tag"], labels=labels, metadata={"metrics": m}) as model:
            shutil.copytree(out_root / entry["folder"], model.path, dirs_exist_ok=True)
        tags[role] = str(model.tag)
        log.info("registered %s in the BentoML model store (%s)", model.tag, model.path)
    return tags


def summary_metrics(roles: dict[str, dict[str, Any]], target: str, why: str,
                    registered: dict[str, str]) -> dict[str, Any]:
    """Manifest metrics: headline figures of the optimised model at the top, every role below."""
    opt = roles["optimized"]
    return {
        "parity_max_abs_diff": max(m["parity_max_abs_diff"] for m in roles.values()),
        "fp32_dev_accuracy": opt["fp32_dev_accuracy"],
        "int8_dev_accuracy": opt.get("int8_dev_accuracy"),
        "int8_drop_points": opt.get("int8_drop_points"),
        "served_test_accuracy": {role: m["test_accuracy"][m["deployed_precision"]] for role, m in roles.items()},
        "deployed": {role: m["deployed_precision"] for role, m in roles.items()},
        "latency_ms": {role: m["latency_ms"] for role, m in roles.items()},
        "quantization": {"target": target, "why": why},
        # Which precision each role deploys, why, and the CPU (model, ISA flags, threads) that decided it.
        "deploy_decisions": {role: {k: m["speed"][k] for k in ("precision", "why", "cpu", "isa", "threads",
                                                                "workload", "rule")}
                             for role, m in roles.items() if "speed" in m},
        "onnx_recipe": recipe.RECIPE,
        "roles": roles,
        "bentoml_models": registered,
    }


def report_line(metrics: dict[str, Any]) -> str:
    """One-paragraph CLI summary."""
    lines = [f"export: parity max |diff| {metrics['parity_max_abs_diff']:.2e}, quantisation "
             f"{metrics['quantization']['target']}"]
    for role, m in metrics["roles"].items():
        lat = ", ".join(f"{p} p50 {v['p50']:.2f} ms" for p, v in m["latency_ms"].items())
        acc = f"fp32 dev acc {m['fp32_dev_accuracy']:.4f}"
        if "int8_dev_accuracy" in m:
            acc += f", int8 {m['int8_dev_accuracy']:.4f} (drop {m['int8_drop_points']:.2f} pts)"
        acc += f"; served test acc {m['test_accuracy'][m['deployed_precision']]:.4f}"
        lines.append(f"  {role} ({m['source']}): {acc}; {lat}; serving {m['deployed_precision']}")
        if "speed" in m:
            lines.append(f"    on {m['speed']['cpu']} ({', '.join(m['speed']['isa'])}): {m['decision']}")
    return "\n".join(lines)
