"""Sweep the paper's 300-candidate Bort grid against the BERT-large shape on this CPU ("speed only").

Random weights (latency does not depend on them), ONNX Runtime, batch 1, sequence 128, 2 threads,
fp32 by default. A well-spread subset is measured, the monotone latency model predicts the rest,
then the speed-only front (params vs latency), Bort's own shape and a seeded hold-out sample are
measured to check the model. Every run is paired with a Bort-shaped reference session (see
optimize/timing.py), so a busy machine shifts all shapes alike. Measurements go through the
shared latency cache: a killed sweep, rerun, measures only what is missing.

Reports: measured-or-predicted latency and speedup over BERT-large for all 300, the model's median
absolute error on re-measured shapes (target <= 10%), the inversions, and where Bort
(4/8/1024/768) sits. Writes bench/results/sweep_bort_grid.{json,md}.

    python bench/sweep_bort_grid.py                       # the full benchmark (<= 30 min, 2 cores)
    python bench/sweep_bort_grid.py --max-measured 12 --holdout 4 --timed-runs 5   # a smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions  # noqa: E402
from bort.families import BERT_LARGE, BORT  # noqa: E402
from optimize import abnc  # noqa: E402
from optimize.fptas import Point, pareto_front  # noqa: E402
from optimize.grid import bort_grid, spread_subset  # noqa: E402
from optimize.latency import LatencyMeter, LatencySettings  # noqa: E402
from optimize.search import abnc_checks, depth_probe, describe  # noqa: E402

log = logging.getLogger("sweep_bort_grid")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-measured", type=int, default=72, help="spread subset measured before the fit")
    p.add_argument("--holdout", type=int, default=16, help="extra random shapes measured to check the model")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--warmup-runs", type=int, default=5)
    p.add_argument("--timed-runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget-s", type=float, default=1650.0, help="stop measuring more after this")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    return p.parse_args(argv)


class Sweep:
    """Measures through the cache within a time budget; remembers what it measured."""

    def __init__(self, meter: LatencyMeter, budget_s: float):
        self.meter, self.budget_s, self.started = meter, budget_s, time.time()
        self.records: dict = {}

    def measure(self, archs: list, what: str) -> None:
        from tqdm import tqdm

        for arch in tqdm([a for a in archs if a not in self.records], desc=what, unit="shape"):
            if time.time() - self.started > self.budget_s and self.meter.cached(arch) is None:
                log.warning("time budget spent: %s and later shapes stay predicted", arch.label())
                break
            self.records[arch] = self.meter(arch)


def fit(grid: list, records: dict) -> abnc.LatencyModel:
    """The monotone model on the grid shapes measured so far (BERT-large, far outside, is left out)."""
    inside = sorted(a for a in records if a in set(grid))
    return abnc.fit_latency_model(inside, [records[a]["p50_ms"] for a in inside])


def run(args: argparse.Namespace) -> dict:
    grid = bort_grid()
    settings = LatencySettings(1, args.seq_len, args.precision, args.threads, args.warmup_runs, args.timed_runs)
    meter = LatencyMeter("bert", settings, seed=args.seed, reference=BORT)
    sweep = Sweep(meter, args.time_budget_s)
    cands = describe(grid, "bert", None, args.seq_len, 1)
    probe = depth_probe(grid)
    sweep.measure([BORT, BERT_LARGE], "reference shapes")
    sweep.measure(spread_subset(grid, args.max_measured) + probe, "spread subset")
    meter.freeze_reference()  # one scale for everything read from here on
    sweep.records = {a: meter.cached(a) for a in sweep.records}
    model = fit(grid, sweep.records)
    predicted = dict(zip(grid, model.predict(grid), strict=True))
    front = pareto_front([Point(a.label(), c.params["net"], predicted[a], 0.0) for a, c in zip(grid, cands, strict=True)])
    rng = np.random.default_rng(args.seed)
    unmeasured = [a for a in grid if a not in sweep.records]
    holdout = [unmeasured[i] for i in rng.permutation(len(unmeasured))[:args.holdout]]
    by_label = {a.label(): a for a in grid}
    checked = [a for a in [by_label[p.label] for p in front] + holdout if a not in sweep.records]
    sweep.measure(checked, "front + hold-out")
    remeasured = [{"arch": a.label(), "predicted_ms": float(predicted[a]), "measured_ms": sweep.records[a]["p50_ms"]}
                  for a in checked if a in sweep.records]
    final = fit(grid, sweep.records)
    for c, p in zip(cands, final.predict(grid), strict=True):
        c.record, c.predicted_ms = sweep.records.get(c.arch), float(p)
    return summarize(args, cands, sweep.records, model, final, remeasured, probe, meter, time.time() - sweep.started)


def summarize(args, cands, records, model, final, remeasured, probe, meter, elapsed) -> dict:
    large_ms = float(records[BERT_LARGE]["p50_ms"])
    rows = [{"label": c.arch.label(), "params_net": c.params["net"], "params_effective": c.params["effective"],
             "flops": c.flops, "latency_ms": round(c.latency_ms, 4), "measured": c.measured,
             "predicted_ms": round(c.predicted_ms, 4), "speedup_vs_bert_large": round(large_ms / c.latency_ms, 3)}
            for c in sorted(cands, key=lambda c: c.latency_ms)]
    bort = next(c for c in cands if c.arch == BORT)
    smaller_faster = [c.arch.label() for c in cands if c.params["net"] < bort.params["net"]
                      and c.latency_ms < bort.latency_ms]
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100 for r in remeasured]
    checks = abnc_checks(cands, records, probe, 0.02)
    return {
        "settings": {"seq_len": args.seq_len, "batch_size": 1, "threads": args.threads, "precision": args.precision,
                     "warmup_runs": args.warmup_runs, "timed_runs": args.timed_runs, "reference": BORT.label(),
                     "weights": "random (speed only)", "runtime": "onnxruntime CPUExecutionProvider"},
        "machine": cpu_info(), "hardware_fingerprint": meter.hw, "versions": library_versions(),
        "bert_large": {"latency_ms": large_ms, "raw_p50_ms": records[BERT_LARGE].get("raw_p50_ms")},
        "n_candidates": len(cands), "n_measured": sum(c.measured for c in cands),
        "new_measurements": meter.measured, "elapsed_s": round(elapsed, 1),
        "latency_model": {"first_fit": model.to_dict(), "final_fit": final.to_dict(),
                          "remeasured": remeasured,
                          "median_abs_pct_error": float(np.median(errors)) if errors else None,
                          "p90_abs_pct_error": float(np.percentile(errors, 90)) if errors else None},
        "inversions": checks["inversions"], "axis_monotonicity": checks["axis_monotonicity"],
        "dominance": checks["dominance"],
        "bort": {"label": BORT.label(), "latency_ms": round(bort.latency_ms, 4), "measured": bort.measured,
                 "speedup_vs_bert_large": round(large_ms / bort.latency_ms, 3),
                 "params_net": bort.params["net"], "params_effective": bort.params["effective"],
                 "n_smaller_and_faster": len(smaller_faster), "smaller_and_faster": smaller_faster},
        "candidates": rows,
    }


def markdown(res: dict) -> str:
    s, b, lm = res["settings"], res["bort"], res["latency_model"]
    mape = lm["median_abs_pct_error"]
    lines = [
        "# Bort grid sweep vs BERT-large (speed only)", "",
        f"ONNX Runtime {s['precision']}, batch 1, sequence {s['seq_len']}, {s['threads']} threads, random weights; "
        f"{res['machine']['model']} (fingerprint `{res['hardware_fingerprint']}`). Every run paired with a "
        f"{s['reference']} reference session. {res['n_measured']} of {res['n_candidates']} shapes measured "
        f"({res['new_measurements']} new this run), the rest predicted; {res['elapsed_s']:.0f} s.", "",
        "| figure | value |", "|---|---:|",
        f"| BERT-large 24/16/1024/4096 latency | {res['bert_large']['latency_ms']:.2f} ms |",
        f"| Bort 4/8/1024/768 latency ({'measured' if b['measured'] else 'predicted'}) | {b['latency_ms']:.2f} ms |",
        f"| Bort speedup over BERT-large | {b['speedup_vs_bert_large']:.2f}x |",
        f"| grid shapes both smaller (net params) and faster than Bort | {b['n_smaller_and_faster']} of 299 |",
        f"| latency model median abs error on {len(lm['remeasured'])} re-measured shapes (target <= 10%) | "
        + (f"{mape:.1f}% |" if mape is not None else "n/a |"),
        f"| latency model leave-one-out median abs error | {lm['final_fit']['loo_median_abs_pct_error'] or 0:.1f}% |",
        f"| inversions (larger on every axis, faster beyond noise) | {len(res['inversions'])} |",
        f"| encoder share of params / FLOPs (median) | {res['dominance']['params_share']['median']:.1%} / "
        f"{res['dominance']['flops_share']['median']:.2%} |", "",
        "## Fastest 15 shapes", "", "| D/A/H/I | params net (M) | latency ms | measured | speedup vs BERT-large |",
        "|---|---:|---:|---|---:|",
    ]
    for r in res["candidates"][:15]:
        lines.append(f"| {r['label']} | {r['params_net'] / 1e6:.1f} | {r['latency_ms']:.2f} | {r['measured']} | "
                     f"{r['speedup_vs_bert_large']:.1f}x |")
    if res["inversions"]:
        lines += ["", "## Inversions", ""] + [f"- {i['larger']} ({i['larger_p50_ms']} ms) faster than "
                                              f"{i['smaller']} ({i['smaller_p50_ms']} ms)" for i in res["inversions"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    res = run(args)
    out = Path(args.out)
    atomic_write_json(out / "sweep_bort_grid.json", res)
    atomic_write_text(out / "sweep_bort_grid.md", markdown(res))
    print(markdown(res).split("## Fastest")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
