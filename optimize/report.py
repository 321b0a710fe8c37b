"""The search's outputs: every candidate (CSV, JSON), the front, the chosen shape, the ABnC
findings (JSON and Markdown) and the Pareto plot."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from bort.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from optimize.search import Candidate, SearchResult

FIGURES = ("p10_ms", "p50_ms", "p90_ms", "p99_ms", "trimmed_mean_ms", "mean_ms", "min_ms", "std_ms")
COLUMNS = ("label", "layers", "heads", "hidden", "intermediate", "params_net", "params_effective",
           "params_embeddings", "flops", "latency_ms", "model_latency_ms", "served_latency_ms", "latency_source",
           *FIGURES, "predicted_ms",
           "speedup", "error", "status", "note", "cell", "kept", "in_front", "chosen")


def candidate_rows(result: SearchResult, fixed_ms: float | None = None) -> list[dict[str, Any]]:
    """One flat row per candidate with every figure (None where not applicable). With the served
    objective (`fixed_ms` given) ``latency_ms`` is the predicted served p50 and ``model_latency_ms``
    the model's own."""
    source_ms = float(result.source_record["p50_ms"])
    cell_of = {p.label: k for k, cell in enumerate(result.fptas.cells) for p in cell}
    kept = {p.label for p in result.fptas.kept}
    front = {p.label for p in result.fptas.front}
    chosen = result.chosen.arch.label() if result.chosen else None
    rows = []
    for c in sorted(result.candidates, key=lambda c: (c.params["net"], c.latency_ms, c.arch.label())):
        label = c.arch.label()
        row = {"label": label, **c.arch.to_dict(), "params_net": c.params["net"],
               "params_effective": c.params["effective"], "params_embeddings": c.params["embeddings"],
               "flops": c.flops, "latency_ms": round(c.latency_ms, 4),
               "model_latency_ms": round(c.latency_ms - (fixed_ms or 0.0), 4),
               "served_latency_ms": round(c.latency_ms, 4) if fixed_ms is not None else None,
               "latency_source": "measured" if c.measured else "predicted",
               **{f: (round(float(c.record[f]), 4) if c.measured and f in c.record else None) for f in FIGURES},
               "predicted_ms": round(c.predicted_ms, 4) if c.predicted_ms is not None else None,
               "speedup": round(source_ms / c.latency_ms, 3), "error": c.error, "status": c.status,
               "note": c.note, "cell": cell_of.get(label), "kept": label in kept, "in_front": label in front,
               "chosen": label == chosen}
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def model_error(result: SearchResult) -> float | None:
    """Median absolute % error of the latency model on finalists measured after being predicted."""
    if not result.remeasured:
        return None
    pred = np.array([r["predicted_ms"] for r in result.remeasured])
    meas = np.array([r["measured_ms"] for r in result.remeasured])
    return float(np.median(np.abs(pred - meas) / meas) * 100.0)


def chosen_dict(c: Candidate, family: str, source_ms: float, row: dict[str, Any]) -> dict[str, Any]:
    return {"arch": c.arch.to_dict(), "label": c.arch.label(), "family": family,
            "params_net": c.params["net"], "params_effective": c.params["effective"], "flops": c.flops,
            "latency_ms": row["latency_ms"], "model_latency_ms": row["model_latency_ms"],
            "served_latency_ms": row["served_latency_ms"], "latency": {f: row[f] for f in FIGURES},
            "source_latency_ms": source_ms, "speedup": row["speedup"], "error": c.error}


def write_outputs(folder: Path, result: SearchResult, meta: dict[str, Any]) -> dict[str, Any]:
    """Write every output into `folder`; return the manifest metrics."""
    fixed = meta.get("fixed_ms") if meta.get("objective") == "served" else None
    rows = candidate_rows(result, fixed)
    by_label = {r["label"]: r for r in rows}
    source_ms = float(result.source_record["p50_ms"])
    atomic_write_text(folder / "candidates.csv", _csv(rows))
    atomic_write_json(folder / "candidates.json", rows)
    atomic_write_json(folder / "front.json", {"epsilon": meta["epsilon"], "n_cells": len(result.fptas.cells),
                                              "front": [by_label[p.label] for p in result.fptas.front]})
    mape = model_error(result)
    atomic_write_json(folder / "abnc.json", {"checks": result.checks, "latency_model": result.model.to_dict(),
                                             "remeasured": result.remeasured, "model_error_pct": mape})
    chosen = None
    if result.chosen is not None:
        chosen = chosen_dict(result.chosen, meta["family"], source_ms, by_label[result.chosen.arch.label()])
        atomic_write_json(folder / "chosen.json", chosen)
    atomic_write_text(folder / "report.md", report_md(result, rows, meta, mape))
    atomic_write_bytes(folder / "pareto.png", pareto_png(rows, meta))
    metrics = {"n_candidates": len(rows), "front_size": len(result.fptas.front),
               "n_cells": len(result.fptas.cells), **{f"n_{k}": v for k, v in result.counts.items()},
               "source_latency_ms": round(source_ms, 4), "latency_model_mape": mape,
               "latency_model_loo_mape": result.model.loo_mape, "n_inversions": len(result.checks["inversions"]),
               "encoder_dominates": result.checks["dominance"]["encoder_dominates"],
               "error_steps": meta.get("error_steps"), "error_estimator": meta.get("error_estimator"),
               "objective": meta.get("objective", "model"), "fixed_ms": fixed, "median_tokens": meta.get("median_tokens"),
               "source_model_latency_ms": round(source_ms - (fixed or 0.0), 4)}
    if chosen:
        metrics.update({"chosen": chosen["label"], "chosen_latency_ms": chosen["latency_ms"],
                        "speedup": chosen["speedup"], "chosen_params_net": chosen["params_net"],
                        "chosen_model_latency_ms": chosen["model_latency_ms"],
                        "chosen_params_effective": chosen["params_effective"], "chosen_error": chosen["error"]})
    return metrics


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape D/A/H/I | params net (M) | effective (M) | model ms (p50) | predicted served ms (p50) | "
             "source | speedup | ê |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        err = "" if r["error"] is None else f"{r['error']:.4g}"
        mark = " **(chosen)**" if r["chosen"] else ""
        served = "" if r["served_latency_ms"] is None else f"{r['served_latency_ms']:.2f}"
        lines.append(f"| {r['label']}{mark} | {r['params_net'] / 1e6:.2f} | {r['params_effective'] / 1e6:.2f} | "
                     f"{r['model_latency_ms']:.2f} | {served} | {r['latency_source']} | {r['speedup']:.2f}x | {err} |")
    return "\n".join(lines)


def _objective_line(meta: dict[str, Any]) -> str:
    if meta.get("objective") != "served":
        return "Objective `model`: candidates are ranked by the model's own latency at the sequence above."
    cost = meta["fixed_cost"]
    return (f"Objective `served`: candidates are ranked by the p50 a caller would wait for at one user, predicted as "
            f"the service's fixed cost, **{cost['fixed_p50_ms']:.2f} ms** (measured through `bort serve` with "
            f"{cost['requests']} of the task's texts: client p50 {cost['client_p50_ms']:.2f} ms minus the model's "
            f"{cost['model_p50_ms']:.2f} ms), plus the model's latency at the task's median length, "
            f"**{meta['median_tokens']} tokens**. Both columns are in the table below.")


def report_md(result: SearchResult, rows: list[dict[str, Any]], meta: dict[str, Any], mape: float | None) -> str:
    """The human-readable account: settings, ABnC findings, the latency model, the front, the choice."""
    ch, dom = result.checks, result.checks["dominance"]
    front_rows = [r for r in rows if r["in_front"]]
    mono = "; ".join(f"{axis}: {v['slower_when_larger']}/{v['pairs']}" for axis, v in ch["axis_monotonicity"].items())
    probe = dom.get("probe") or {}
    out = [
        "# Optimal subarchitecture search", "",
        f"Source `{meta['source']}` ({meta['source_arch']}, {meta['family']}), grid `{meta['grid']}` "
        f"({len(rows)} candidates). Latency: ONNX Runtime {meta['precision']}, batch {meta['batch_size']}, "
        f"sequence {meta['seq_len']}, {meta['num_threads']} threads, on {meta['cpu']} (hardware "
        f"fingerprint `{meta['hw']}`); exporter {meta['exporter']} (`{meta.get('onnx_recipe', '')}`); median of {meta['timed_runs']} timed runs "
        f"after {meta['warmup_runs']} warm-up runs, each paired with a run of the source's shape (figures are "
        "the paired ratios times the source's latency, so a busy machine shifts every shape alike). "
        f"Source latency: {result.source_record['p50_ms']:.2f} ms.", "",
        _objective_line(meta), "",
        f"Error estimate ê: {meta['error_estimator']}, {meta['error_steps']} steps per candidate "
        f"({meta['error_steps_rule']}). ε = {meta['epsilon']}; policy `{meta['policy']}`.", "",
        "## ABnC checks", "",
        f"- Encoder blocks' share of parameters (effective / net): median {dom['params_share']['median']:.1%} "
        f"(min {dom['params_share']['min']:.1%}); of counted FLOPs: median {dom['flops_share']['median']:.2%}.",
        (f"- Measured: latency vs depth through {', '.join(probe['shapes'])} gives {probe['per_layer_ms']:.2f} ms "
         f"per layer and {probe['non_block_ms']:.2f} ms outside the blocks; the blocks' share of measured "
         f"latency is median {dom['latency_share']['median']:.1%} (min {dom['latency_share']['min']:.1%})."
         if probe else "- Measured depth probe: not available."),
        f"- Encoder blocks dominate cost: **{'yes' if dom['encoder_dominates'] else 'no'}**.",
        f"- Per-axis monotonicity (neighbour pairs slower when larger / measured pairs): {mono}.",
        f"- Inversions (larger on every axis yet faster by more than noise): **{len(ch['inversions'])}**.",
    ]
    for inv in ch["inversions"][:50]:
        out.append(f"  - {inv['larger']} ({inv['larger_p50_ms']} ms) faster than {inv['smaller']} "
                   f"({inv['smaller_p50_ms']} ms), by {inv['excess_pct']}%")
    model = result.model
    out += ["", "## Latency model", "",
            f"Monotone non-negative model over {', '.join(model.to_dict()['features'])}, fit on {model.n_fit} "
            f"measurements: median abs error {model.fit_mape:.1f}% in-sample"
            + (f", {model.loo_mape:.1f}% leave-one-out" if model.loo_mape is not None else "") + ". "
            + (f"On {len(result.remeasured)} finalists measured after prediction: median abs error {mape:.1f}%."
               if mape is not None else "No finalist needed re-measuring (all front points were measured)."),
            f"Measured {result.counts['measured']} of {len(rows)} candidates; the rest use the model's value.",
            "", "## Error phase", "",
            ", ".join(f"{k}: {v}" for k, v in result.counts.items() if k != "measured") + ".", "",
            f"## Pareto front ({len(front_rows)} points from {len(result.fptas.cells)} ε-cells)", "",
            _table(front_rows), "", "## Chosen", ""]
    if result.chosen is not None:
        r = next(r for r in rows if r["chosen"])
        out.append(f"**{r['label']}** (D/A/H/I): {r['params_net'] / 1e6:.2f} M parameters "
                   f"({r['params_effective'] / 1e6:.2f} M in the encoder), {r['latency_ms']:.2f} ms "
                   f"({r['latency_source']}), {r['speedup']:.2f}x faster than the source, ê = {r['error']:.4g}.")
    else:
        out.append(f"Nothing chosen: {result.choice_error}")
    if meta["policy"] == "compromise":
        out += ["", f"Compromise weights (params, latency, error) = {list(meta['weights'])} over min-max "
                "normalised front values: our stand-in for the paper's unpublished W-coefficient."]
    return "\n".join(out) + "\n"


def pareto_png(rows: list[dict[str, Any]], meta: dict[str, Any]) -> bytes:
    """Params vs latency, colour = ê (grey: untrained), front ringed, chosen starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    untrained = [r for r in rows if r["error"] is None]
    trained = [r for r in rows if r["error"] is not None]
    if untrained:
        ax.scatter([r["params_net"] / 1e6 for r in untrained], [r["latency_ms"] for r in untrained],
                   c="lightgrey", s=14, label="not trained")
    if trained:
        sc = ax.scatter([r["params_net"] / 1e6 for r in trained], [r["latency_ms"] for r in trained],
                        c=[r["error"] for r in trained], cmap="viridis_r", s=22, label="trained")
        fig.colorbar(sc, ax=ax, label="ê (estimated error)")
    front = sorted((r for r in rows if r["in_front"]), key=lambda r: r["params_net"])
    ax.scatter([r["params_net"] / 1e6 for r in front], [r["latency_ms"] for r in front], s=90,
               facecolors="none", edgecolors="crimson", linewidths=1.4, label="Pareto front")
    for r in rows:
        if r["chosen"]:
            ax.scatter([r["params_net"] / 1e6], [r["latency_ms"]], marker="*", s=320, c="gold",
                       edgecolors="black", zorder=5, label=f"chosen {r['label']}")
    ax.set_xlabel("parameters, net (millions)")
    ax.set_ylabel(f"latency ms (ORT {meta['precision']}, seq {meta['seq_len']}, {meta['num_threads']} threads)")
    ax.set_title(f"Search over {len(rows)} shapes of {meta['source']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
