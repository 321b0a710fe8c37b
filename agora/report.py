"""The finetune stage's outputs besides the models: rounds.{json,csv}, accuracy.png, report.md."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from bort.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from bort.config import RunConfig

CSV_COLUMNS = ("iteration", "round", "replay", "thetas", "best_theta", "dev_accuracy", "dev_macro_f1",
               "best_so_far", "improved", "train_size", "mistakes", "mistakes_used", "candidates", "in_band",
               "made", "kept", "labeller_agreement", "mean_similarity", "thetas_left", "seconds")


def write_rounds(folder: Path, rows: list[dict[str, Any]]) -> None:
    """The per-round log: every field in JSON, the main ones in CSV (lists joined with ``|``)."""
    atomic_write_json(folder / "rounds.json", rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()})
    atomic_write_text(folder / "rounds.csv", buf.getvalue())


def plot_rounds(path: Path, rows: list[dict[str, Any]], dev: dict[str, dict[str, float]], metric: str) -> None:
    """Dev score of every θ run and of each iteration's best, against the plain and labeller lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = [r["iteration"] for r in rows]
    for r in rows:
        scores = list(r["dev_by_theta"].values())
        ax.scatter([r["iteration"]] * len(scores), scores, s=14, color="0.6", zorder=2)
    ax.plot(xs, [r["dev_by_theta"][r["best_theta"]] for r in rows], "o-", color="C2", label="Agora, round best",
            zorder=3)
    ax.axhline(dev["plain"][metric], color="C0", ls="--", label=f"plain ({dev['plain'][metric]:.3f})")
    ax.axhline(dev["labeller"][metric], color="C3", ls=":", label=f"labeller ({dev['labeller'][metric]:.3f})")
    ax.set_xticks(xs, [f"{r['round']}{'r' if r['replay'] else ''}" for r in rows])
    ax.set_xlabel("round (r: replay)")
    ax.set_ylabel(f"dev {metric.replace('_', '-')}")
    ax.set_title("Agora: dev score per round (grey: each θ)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def write_report(folder: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], cfg: RunConfig) -> None:
    """``report.md``: the models and the baselines side by side on the untouched test split, then
    the rounds."""
    metric, chance = metrics["metric"], metrics["chance_metric"]
    cols = list(dict.fromkeys(["accuracy", chance, metric]))
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC", "balanced_accuracy": "balanced acc."}
    gate = metrics["deploy_gate"]
    lines = [
        f"# Fine-tuning report: {metrics['task']}", "",
        f"Deployed model: **{metrics['deploy']}** ({metrics['deploy_reason']}).", "",
        f"Recipe: {metrics['recipe']['why']}.", "",
        f"Models are picked by dev **{names[metric]}**: {metrics['metric_reason']}. The deploy gate "
        f"(`bort export`) reads {metrics['deploy']}'s dev {names[metric]} "
        f"{_pct(gate['dev'][metric])} against the majority baseline's {_pct(gate['majority'][metric])} "
        f"(permutation p = {gate['p_value']:.3g}; {gate['predicted_classes']} of {len(metrics['labels'])} "
        "classes predicted).", "",
        "Test scores are measured on the test split, which no model trained or was selected on "
        "(enforced by `agora.guard.Guard`). Dev scores of Agora are optimistic: its new points are "
        "perturbations of dev mistakes.", "",
        "| model | " + " | ".join(f"test {names[c]}" for c in cols) + f" | dev {names[metric]} | "
        f"held-out dev {names[metric]} | seconds |",
        "|---|" + "---|" * (len(cols) + 3),
    ]
    held = metrics.get("choice", {})
    for name in [n for n in ("labeller", "plain", "distil", "agora") if n in metrics["test"]]:
        lines.append(f"| {name} | " + " | ".join(_pct(metrics["test"][name][c]) for c in cols) +
                     f" | {_pct(metrics['dev'][name][metric])} | {_pct(held.get(name, {}).get(metric))} | "
                     f"{metrics['seconds'][name]} |")
    enum = metrics["enumeration"]
    lines.append("| Θ enumeration (round 1 only, no new points) | " +
                 " | ".join(_pct(enum.get(c)) for c in cols) + " | | | |")
    if "ablation" in metrics:
        ab = metrics["ablation"]
        lines.append("| Agora's path without its new points (more epochs only) | " +
                     " | ".join(_pct(ab.get(c)) for c in cols) + f" | {_pct(ab['dev'].get(metric))} | | "
                     f"{ab['seconds']} |")
    for base, label in (("majority", "always the majority class"), ("stratified", "stratified random (expected)")):
        lines.append(f"| *baseline: {label}* | " +
                     " | ".join(_pct(metrics["baselines"]["test"][base][c]) for c in cols) +
                     f" | {_pct(metrics['baselines']['dev'][base][metric])} | | |")
    lines += [
        "",
        f"Gap closed by Agora: {metrics['gap_closed_text']}.", "",
        f"Rounds: {metrics['rounds']} ({metrics['iterations']} iterations, {metrics['replays']} replay(s)); "
        f"new points made {metrics['points_made']}, kept {metrics['points_kept']}; "
        f"stopped because: {metrics['stop_reason']}.", "",
        "## Rounds", "",
        "| round | Θ | best θ | dev acc | dev F1 | mistakes | G tries | in band | kept | labeller agrees | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "n/a" if r.get("labeller_agreement") is None else f"{r['labeller_agreement']:.2f}"
        lines.append(f"| {r['round']}{' (replay)' if r['replay'] else ''} | {len(r['thetas'])} | "
                     f"`{r['best_theta']}` | {_pct(r['dev_accuracy'])} | {_pct(r['dev_macro_f1'])} | "
                     f"{r['mistakes']} | {r['candidates']} | {r['in_band']} | {r['kept']} | {agree} | "
                     f"{r['seconds']} |")
    lines += [
        "", "![dev score per round](accuracy.png)", "",
        "## Settings", "",
        f"Labels: {', '.join(metrics['labels'])}; sizes: {json.dumps(metrics['sizes'])}. "
        f"Test texts guarded: {metrics['guard']['test_texts']}; dropped on contact: "
        f"{json.dumps(metrics['guard']['dropped'])}.", "",
        "```json", json.dumps(cfg.to_dict()["finetune"], indent=2), "```", "",
    ]
    atomic_write_text(folder / "report.md", "\n".join(lines))
