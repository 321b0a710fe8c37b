"""A finished run's figures as a committed table: what the README quotes from a `bort run`.

Reads ``runs/<run>/timings.json`` and the stage manifests (never recomputes anything) and writes
``bench/results/run-<tag>.{json,md}``: stage times against their budgets, the search's choice and
its predicted served speedup, pretraining, test accuracy of every model beside the majority
baseline and the chance-corrected metric, the deploy gate, the export decision, and the load
test's requests/s and p50 with their ratios. Several runs of one profile that differ only in
``finetune.student_seed`` can be folded into mean ± std with ``--seed-runs``.

    .venv/bin/python bench/run_summary.py --run-dir runs/default --tag default
    .venv/bin/python bench/run_summary.py --run-dir runs/base-rt --tag base-rt --seed-runs runs/base-rt-s1,runs/base-rt-s2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort.artifacts import atomic_write_json, atomic_write_text, read_manifest  # noqa: E402
from bort.config import BudgetConfig  # noqa: E402
from bort.errors import BortError  # noqa: E402

OUT = ROOT / "bench" / "results"
MODELS = ("labeller", "plain", "distil", "agora")


def manifests(run_dir: Path) -> dict[str, Any]:
    out = {}
    for stage in ("data", "optimize", "pretrain", "finetune", "export", "loadtest"):
        try:
            out[stage] = read_manifest(run_dir, stage, verify=False)
        except BortError:
            continue
    return out


def summary(run_dir: Path, seed_runs: list[Path]) -> dict[str, Any]:
    """The run's figures (and, with `seed_runs`, the finetune figures over every seed)."""
    m = manifests(run_dir)
    timings = json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").is_file() else {}
    out: dict[str, Any] = {"run_dir": str(run_dir), "timings": timings}
    first = next(iter(m.values()), None)
    if first is not None:
        out["machine"] = first.machine
        out["versions"] = {k: first.versions.get(k) for k in ("bort", "torch", "onnxruntime")}
        out["source"] = first.config["source"]["model"]
        out["task"] = first.config["task"]["name"]
    out["stage_seconds"] = {
        stage: {"seconds": man.elapsed_s,
                "budget_s": (man.config.get("budgets") or {}).get(f"{stage}_s", BudgetConfig().of(stage))}
        for stage, man in m.items() if stage != "data" and man.elapsed_s is not None}
    if "optimize" in m:
        o = m["optimize"].metrics
        out["search"] = {k: o.get(k) for k in ("chosen", "speedup", "chosen_latency_ms", "source_latency_ms",
                                               "objective", "fixed_ms", "median_tokens", "chosen_params_net",
                                               "n_candidates", "front_size")}
    if "pretrain" in m:
        p = m["pretrain"].metrics
        out["pretrain"] = {k: p.get(k) for k in ("steps", "stopped_by", "seconds", "embedding_cosine", "shape")}
    if "finetune" in m:
        out["finetune"] = _finetune(m["finetune"].metrics)
        out["seeds"] = _over_seeds([run_dir, *seed_runs])
    if "export" in m:
        e = m["export"].metrics
        out["export"] = {"deployed": e.get("deployed"), "gate": e.get("gate"),
                         "served_test_accuracy": e.get("served_test_accuracy")}
    if "loadtest" in m:
        lt = m["loadtest"].metrics
        out["loadtest"] = {k: lt.get(k) for k in ("baseline", "optimized", "rps_ratio", "rps_ratio_users", "p50_ratio",
                                                  "p50_ratio_users", "failures", "models", "accuracy")}
    return out


def _finetune(f: dict[str, Any]) -> dict[str, Any]:
    names = [n for n in MODELS if n in f.get("test", {})]
    return {"metric": f.get("metric"), "chance_metric": f.get("chance_metric"), "deploy": f.get("deploy"),
            "deploy_reason": f.get("deploy_reason"), "recipe": (f.get("recipe") or {}).get("why"),
            "test": {n: f["test"][n] for n in names}, "baselines": (f.get("baselines") or {}).get("test"),
            "gate": f.get("deploy_gate"), "seconds": f.get("seconds"), "sizes": f.get("sizes")}


def _over_seeds(runs: list[Path]) -> dict[str, Any]:
    """Test accuracy per model over the runs' finetune stages (one student seed each), mean ± std."""
    rows = [read_manifest(r, "finetune", verify=False).metrics for r in runs if (r / "finetune").is_dir()]
    out: dict[str, Any] = {"n": len(rows), "student_seeds": [], "accuracy": {}}
    for name in MODELS:
        values = [r["test"][name]["accuracy"] for r in rows if name in r.get("test", {})]
        if values:
            out["accuracy"][name] = _spread(values)
    deployed = [r["test"][r["deploy"]]["accuracy"] for r in rows if r.get("deploy") in r.get("test", {})]
    if deployed:
        out["accuracy"]["deployed"] = {**_spread(deployed), "which": [r["deploy"] for r in rows]}
    served = [read_manifest(r, "export", verify=False).metrics["served_test_accuracy"]["optimized"]
              for r in runs if (r / "export").is_dir()]
    if len(served) == len(rows) > 0:  # what the endpoint answers: the deployed student as exported (int8 or fp32)
        out["accuracy"]["served as deployed"] = _spread(served)
    return out


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample std (0 for one value) and the values themselves."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def markdown(s: dict[str, Any]) -> str:
    machine = s.get("machine") or {}
    lines = [f"# Run summary: `{s['run_dir']}`", "",
             f"Source `{s.get('source')}`, task `{s.get('task')}`; CPU {machine.get('model')} (ISA "
             f"{', '.join(machine.get('isa') or [])}; {machine.get('usable_cores')} cores usable); versions "
             f"{s.get('versions')}. Every figure is read from the run's manifests and timings.json.", ""]
    t = s.get("timings") or {}
    if s.get("stage_seconds"):
        lines += ["## Stage times (s)", "",
                  "Each stage's own wall time, from its manifest (`elapsed_s`: the sitting that made it, also when "
                  "`bort run` later skipped it as up to date), against its budget (`budgets.*`).", "",
                  "| stage | seconds | budget | over budget |", "|---|---|---|---|"]
        for stage, row in s["stage_seconds"].items():
            over = None if row["budget_s"] is None else row["seconds"] > row["budget_s"]
            lines.append(f"| {stage} | {row['seconds']:.1f} | {row['budget_s']} | {over} |")
        lines.append("")
    if t:
        lines += ["`bort run`'s last sitting (timings.json): " + ", ".join(
            f"{st['stage']} {st['seconds']:.1f} s{' (skipped: up to date)' if st['skipped'] else ''}"
            for st in t.get("stages", [])) + f"; total {t.get('total_s')} s.", ""]
    if "search" in s:
        lines += ["## Search", "", "```json", json.dumps(s["search"], indent=1), "```", ""]
    if "pretrain" in s:
        lines += ["## Pretraining", "", "```json", json.dumps(s["pretrain"], indent=1), "```", ""]
    if "finetune" in s:
        f = s["finetune"]
        cm = f["chance_metric"]
        lines += ["## Test scores (%)", "", f"Judged by {f['metric']}; deployed: **{f['deploy']}** "
                  f"({f.get('deploy_reason') or 'reason not recorded'}).", "",
                  *([f"Recipe: {f['recipe']}.", ""] if f.get("recipe") else []),
                  f"| model | accuracy | {cm} |", "|---|---|---|"]
        for name, sc in f["test"].items():
            lines.append(f"| {name} | {100 * sc['accuracy']:.2f} | {100 * sc[cm]:.2f} |")
        for base, sc in (f["baselines"] or {}).items():
            lines.append(f"| *baseline: {base}* | {100 * sc['accuracy']:.2f} | {100 * sc[cm]:.2f} |")
        seeds = s.get("seeds") or {}
        if seeds.get("n", 0) > 1:
            lines += ["", f"Over {seeds['n']} student seeds (same split, labeller and pretrained student), "
                      "test accuracy mean ± std:", "", "| model | mean ± std | per seed |", "|---|---|---|"]
            for name, st in seeds["accuracy"].items():
                which = f" ({', '.join(st['which'])})" if "which" in st else ""
                lines.append(f"| {name} | {100 * st['mean']:.2f} ± {100 * st['std']:.2f} | "
                             f"{', '.join(f'{100 * v:.2f}' for v in st['values'])}{which} |")
        lines.append("")
    if "export" in s:
        lines += ["## Export and the deploy gate", "", "```json", json.dumps(s["export"], indent=1), "```", ""]
    if "loadtest" in s:
        lt = s["loadtest"]
        lines += ["## Load test (Locust, 127.0.0.1)", "",
                  f"{lt['optimized']} against {lt['baseline']}: {lt['rps_ratio']}x requests/s at "
                  f"{lt['rps_ratio_users']} users, {lt['p50_ratio']}x lower p50 at {lt['p50_ratio_users']}; "
                  f"{lt['failures']} failed requests.", "", "| model | users | requests/s | p50 ms | p95 ms |",
                  "|---|---|---|---|---|"]
        for role, levels in (lt.get("models") or {}).items():
            for users, lv in levels.items():
                lines.append(f"| {role} | {users} | {lv['rps']:.1f} | {lv['p50_ms']} | {lv['p95_ms']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--tag", required=True, help="writes bench/results/run-TAG.{json,md}")
    p.add_argument("--seed-runs", default="", help="comma-separated run folders of the other student seeds")
    args = p.parse_args(argv)
    seed_runs = [Path(x) for x in args.seed_runs.split(",") if x]
    s = summary(Path(args.run_dir), seed_runs)
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / f"run-{args.tag}.json", s)
    atomic_write_text(OUT / f"run-{args.tag}.md", markdown(s))
    print(markdown(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
