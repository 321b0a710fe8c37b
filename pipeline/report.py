"""The run report: every figure is read from a stage manifest, and ``report.json`` says which.

``report.md`` and ``report.html`` show the chosen architecture and Pareto plot, source vs extracted
size and latency, the accuracy table, export parity and the int8 drop, the served speedup, and
the machine. A test checks every figure against the manifest it names.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bort.artifacts import atomic_write_json, atomic_write_text, read_manifest
from bort.errors import BortError

MISSING = "n/a"


@dataclass
class Figure:
    """One number in the report and where it came from."""

    label: str
    stage: str
    key: str  # dotted path into the manifest's metrics
    value: Any
    text: str


def lookup(metrics: dict[str, Any], dotted: str) -> Any:
    """``metrics["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fmt(value: Any) -> str:
    """How a figure is printed: floats to 4 significant digits, the rest as is."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# Sections: (title, stage, [(label, dotted metric key), ...]).
SECTIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Chosen architecture (search)", "optimize", [
        ("candidates", "n_candidates"), ("Pareto front size", "front_size"),
        ("chosen shape D/A/H/I", "chosen"), ("chosen parameters, net", "chosen_params_net"),
        ("chosen parameters, effective (encoder)", "chosen_params_effective"),
        ("chosen latency, ms (ORT, search settings)", "chosen_latency_ms"),
        ("source latency, ms (same settings)", "source_latency_ms"), ("speedup", "speedup"),
        ("latency inversions measured", "n_inversions"),
        ("latency model error, leave-one-out %", "latency_model_loo_mape"),
    ]),
    ("Distillation pretraining", "pretrain", [
        ("initialisation", "init"), ("steps", "steps"), ("held-out distillation loss", "heldout_loss"),
        ("embedding cosine with the source", "embedding_cosine"),
    ]),
    ("Accuracy on the untouched test split", "finetune", [
        ("models are judged by (task metric)", "metric"), ("why this metric", "metric_reason"),
        ("labeller (source fine-tuned) accuracy", "accuracy.labeller"),
        ("plain fine-tuning accuracy", "accuracy.plain"), ("Agora accuracy", "accuracy.agora"),
        ("task-specific distillation accuracy", "accuracy.distil"),
        ("baseline: always the majority class, accuracy", "baselines.test.majority.accuracy"),
        ("baseline: stratified random (expected), accuracy", "baselines.test.stratified.accuracy"),
        ("labeller macro-F1", "macro_f1.labeller"), ("plain macro-F1", "macro_f1.plain"),
        ("Agora macro-F1", "macro_f1.agora"),
        ("baseline: always the majority class, macro-F1", "baselines.test.majority.macro_f1"),
        ("labeller MCC", "test.labeller.mcc"), ("plain MCC", "test.plain.mcc"), ("Agora MCC", "test.agora.mcc"),
        ("distillation MCC", "test.distil.mcc"),
        ("baseline: always the majority class, MCC", "baselines.test.majority.mcc"),
        ("deployed model", "deploy"), ("why", "deploy_reason"),
    ]),
    ("Deploy gate (dev: the student against the majority baseline)", "export", [
        ("verdict", "gate.text"), ("passed", "gate.passed"), ("deployed anyway (--force)", "gate.forced"),
    ]),
    ("Export", "export", [
        ("fp32 ONNX vs PyTorch, max abs logit difference", "parity_max_abs_diff"),
        ("fp32 dev accuracy", "fp32_dev_accuracy"), ("int8 dev accuracy", "int8_dev_accuracy"),
        ("int8 drop, points", "int8_drop_points"), ("deployed precision, optimised model", "deployed.optimized"),
        ("deployed precision, baseline model", "deployed.baseline"),
        ("test accuracy of the served optimised file", "served_test_accuracy.optimized"),
        ("test accuracy of the served baseline file", "served_test_accuracy.baseline"),
    ]),
    ("Served speed (Locust on 127.0.0.1)", "loadtest", [
        ("baseline", "baseline"), ("requests/s ratio, optimised/baseline", "rps_ratio"),
        ("p50 ratio, baseline/optimised", "p50_ratio"), ("failed requests", "failures"),
    ]),
]
PLOTS = [("optimize", "pareto.png", "Pareto front"), ("pretrain", "loss.png", "Distillation loss"),
         ("finetune", "accuracy.png", "Accuracy per Agora round"),
         ("loadtest", "latency.png", "Served latency"), ("loadtest", "rps.png", "Requests/s against users")]


def collect(run_dir: Path) -> tuple[list[tuple[str, list[Figure]]], dict[str, Any]]:
    """Read every stage manifest that exists; return the report's sections and the manifests."""
    manifests: dict[str, Any] = {}
    for _, stage, _ in SECTIONS:
        try:
            manifests[stage] = read_manifest(run_dir, stage)
        except BortError:
            continue
    sections = []
    for title, stage, rows in SECTIONS:
        metrics = manifests[stage].metrics if stage in manifests else {}
        figures = [Figure(label, stage, key, v := lookup(metrics, key), fmt(v)) for label, key in rows]
        sections.append((title, figures))
    return sections, manifests


def _machine_rows(manifests: dict[str, Any]) -> list[tuple[str, str]]:
    if not manifests:
        return []
    m = next(iter(manifests.values()))
    return [("CPU", m.machine.get("model", MISSING)), ("ISA", " ".join(m.machine.get("isa", []))),
            ("cores usable", fmt(m.machine.get("usable_cores"))),
            ("onnxruntime", m.versions.get("onnxruntime", MISSING)), ("torch", m.versions.get("torch", MISSING))]


def write_run_report(run_dir: str | Path, timings: list[dict[str, Any]] | None = None,
                     total_s: float | None = None, failure: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and report.json into `run_dir`; `failure` says why the run stopped."""
    run_dir = Path(run_dir)
    sections, manifests = collect(run_dir)
    md = [f"# bort run report: `{run_dir.name}`", ""]
    if failure:
        md += [f"**The run stopped: {failure}**", ""]
    if total_s is not None:
        md += [f"Whole pipeline: {total_s:.0f} s.", ""]
    for title, figures in sections:
        md += [f"## {title}", "", "| figure | value |", "|---|---|"]
        md += [f"| {f.label} | {f.text} |" for f in figures] + [""]
    for stage, name, caption in PLOTS:
        if (run_dir / stage / name).is_file():
            md += [f"![{caption}]({stage}/{name})", ""]
    if timings:
        md += ["## Stage times", "", "| stage | seconds | skipped | budget s |", "|---|---|---|---|"]
        md += [f"| {t['stage']} | {t['seconds']:.1f} | {fmt(t['skipped'])} | {_budget(t)} |" for t in timings] + [""]
    machine = _machine_rows(manifests)
    if machine:
        md += ["## Machine", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in machine] + [""]
    for stage in ("optimize", "finetune", "loadtest"):
        if (run_dir / stage / "report.md").is_file():
            md += [f"Details: [{stage}/report.md]({stage}/report.md)", ""]
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html", "json": run_dir / "report.json"}
    atomic_write_text(paths["md"], "\n".join(md))
    atomic_write_text(paths["html"], _html(run_dir, sections, machine, timings, failure))
    atomic_write_json(paths["json"], {
        "figures": [f.__dict__ for _, figs in sections for f in figs],
        "fingerprints": {s: m.fingerprint for s, m in manifests.items()},
        "failure": failure,
    })
    return paths


def _budget(timing: dict[str, Any]) -> str:
    if timing.get("budget_s") is None:
        return MISSING
    return f"{timing['budget_s']:.0f}" + (" **(over)**" if timing.get("over_budget") else "")


def _html(run_dir: Path, sections, machine, timings, failure: str | None = None) -> str:
    """One self-contained HTML file: the plots are embedded (data: URIs), nothing is fetched."""
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>bort run {e(run_dir.name)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:.2em .6em}td:last-child{text-align:right}"
           ".failure{color:#a00;font-weight:bold}</style></head><body>",
           f"<h1>bort run report: {e(run_dir.name)}</h1>"]
    if failure:
        out.append(f"<p class='failure' id='failure'>The run stopped: {e(failure)}</p>")
    for title, figures in sections:
        out.append(f"<h2>{e(title)}</h2><table>")
        out += [f"<tr><td>{e(f.label)}</td><td>{e(f.text)}</td></tr>" for f in figures]
        out.append("</table>")
    for stage, name, caption in PLOTS:
        if (run_dir / stage / name).is_file():
            data = base64.b64encode((run_dir / stage / name).read_bytes()).decode("ascii")
            out.append(f"<figure><img src='data:image/png;base64,{data}' width='640' alt='{e(caption)}'>"
                       f"<figcaption>{e(caption)}</figcaption></figure>")
    if timings:
        out.append("<h2>Stage times</h2><table>")
        out += [f"<tr><td>{e(t['stage'])}</td><td>{t['seconds']:.1f} s</td></tr>" for t in timings]
        out.append("</table>")
    if machine:
        out.append("<h2>Machine</h2><table>")
        out += [f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in machine]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
