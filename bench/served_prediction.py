"""Does the search's predicted served latency match what Locust measures? (the served objective's check)

For a finished run, the search predicted each shape's served p50 at one user as the service's fixed
cost plus the model's latency at the task's median length (``optimize/served.py``). The load test
then measured, with Locust on 127.0.0.1, the p50 at one user of the deployed student (at the
precision ``bort export`` deployed) and of the source (the labeller, served fp32). This script
times both shapes at those precisions with the search's own meter (random weights: latency does
not depend on them; cached per machine) and puts prediction and measurement side by side.
Goal: within 15% for both.

The search caches its latencies and the fixed cost per machine. A search that ran while other jobs
shared the cores cached inflated figures, and the check then fails for that reason, not the
model's; ``--fresh`` re-measures both now into a private cache (the search's figures are kept
beside, in the JSON).

Writes ``bench/results/served_prediction[-TAG].{json,md}``. Run after ``bort run`` (or at least
``bort optimize``, ``bort export`` and ``bort loadtest``)::

    HF_HUB_OFFLINE=1 BORT_CACHE=.cache/bort .venv/bin/python bench/served_prediction.py --run-dir runs/default
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions, read_manifest  # noqa: E402
from bort.families import Arch, resolve_source  # noqa: E402

OUT = ROOT / "bench" / "results"
GOAL = 0.15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="a finished bort run (optimize, export and loadtest)")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--timed-runs", type=int, default=50)
    p.add_argument("--fresh", action="store_true",
                   help="measure the model latencies and the service's fixed cost now (a private cache) instead of "
                        "reading the figures the search cached: for a search that ran while other jobs shared the "
                        "cores")
    return p.parse_args(argv)


def fresh_fixed_cost(run_dir: Path, source: Any, num_threads: int, seed: int, cache: Path) -> float:
    """The service's fixed cost measured now (an empty cache), with the texts the search's probe sent."""
    from bort.data import load_prepared
    from optimize import served

    texts = [e.text for e in load_prepared(run_dir).train]
    return served.fixed_cost(source, texts, num_threads, cache, hw="fresh", seed=seed).fixed_p50_ms


def predictions(run_dir: Path, timed_runs: int, fresh_dir: Path | None = None) -> list[dict[str, Any]]:
    """The predicted served p50 of the deployed student and of the source, at the precisions served."""
    from optimize.latency import LatencyMeter, LatencySettings

    opt, export = read_manifest(run_dir, "optimize"), read_manifest(run_dir, "export")
    o = opt.metrics
    if o.get("objective") != "served":
        raise SystemExit(f"{run_dir}: the search ran with objective {o.get('objective')!r}; nothing predicted")
    cfg = opt.config["optimize"]
    source = resolve_source(opt.config["source"]["model"])
    fixed, length = float(o["fixed_ms"]), int(o["median_tokens"])
    cache = None
    if fresh_dir is not None:  # measured now into an empty cache, not read from the search's
        fixed = fresh_fixed_cost(run_dir, source, cfg["num_threads"], int(opt.config.get("seed", 0)), fresh_dir)
        cache = fresh_dir / "latency.jsonl"
    deployed = (export.metrics.get("deployed") or {}).get("optimized", "fp32")
    rows = []
    for role, arch, precision in (("optimized", Arch.parse(o["chosen"]), deployed),
                                  ("baseline", source.arch, "fp32")):
        settings = LatencySettings(batch_size=1, seq_len=length, precision=precision, num_threads=cfg["num_threads"],
                                   warmup_runs=5, timed_runs=timed_runs,
                                   optimize_graph=cfg.get("optimize_graph", False),
                                   quantization=cfg.get("quantization", "auto"))
        meter = LatencyMeter(source.family, settings, base_config=source.config, reference=source.arch,
                             cache_path=cache)
        model_ms = float(meter(arch)["p50_ms"])
        rows.append({"role": role, "shape": arch.label(), "precision": precision, "model_p50_ms": round(model_ms, 3),
                     "fixed_ms": fixed, "predicted_p50_ms": round(model_ms + fixed, 3)})
    return rows


def compare(rows: list[dict[str, Any]], loadtest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each prediction beside the load test's p50 at its fewest users, with the relative error."""
    for row in rows:
        levels = loadtest["models"][row["role"]]
        users = min(levels, key=int)
        measured = float(levels[users]["p50_ms"])
        row.update({"users": int(users), "measured_p50_ms": measured,
                    "error": round((row["predicted_p50_ms"] - measured) / measured, 4)})
        row["within_goal"] = abs(row["error"]) <= GOAL
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Predicted served latency against Locust: `{result['run_dir']}`", "",
             f"CPU {m['model']} (ISA {', '.join(m['isa'])}; {m['usable_cores']} cores usable); "
             f"median request {result['median_tokens']} tokens; fixed cost {result['fixed_ms']:.2f} ms measured "
             + ("now (`--fresh`: model latencies and fixed cost re-measured on a quiet machine; the search's cached "
                f"fixed cost was {result['searched_fixed_ms']:.2f} ms)" if result.get("fresh") else "by the search")
             + " through `bort serve`; Locust p50 at one user from the run's load test. Goal: within "
             f"{100 * GOAL:.0f}%.", "",
             "| model | shape | precision | model p50 ms | predicted served p50 ms | Locust p50 ms | error | within goal |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['role']} | {r['shape']} | {r['precision']} | {r['model_p50_ms']:.2f} | "
                     f"{r['predicted_p50_ms']:.2f} | {r['measured_p50_ms']:.2f} | {100 * r['error']:+.1f}% | "
                     f"{'yes' if r['within_goal'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bort-served-prediction-") as fresh_dir:
        rows = compare(predictions(run_dir, args.timed_runs, Path(fresh_dir) if args.fresh else None),
                       read_manifest(run_dir, "loadtest").metrics)
    o = read_manifest(run_dir, "optimize").metrics
    result = {"run_dir": str(run_dir), "rows": rows, "fixed_ms": rows[0]["fixed_ms"], "searched_fixed_ms": o["fixed_ms"],
              "fresh": args.fresh, "median_tokens": o["median_tokens"],
              "machine": cpu_info(), "versions": library_versions(), "elapsed_s": round(time.time() - started, 1)}
    suffix = f"-{args.tag}" if args.tag else ""
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / f"served_prediction{suffix}.json", result)
    atomic_write_text(OUT / f"served_prediction{suffix}.md", markdown(result))
    print(markdown(result))
    return 0 if all(r["within_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
