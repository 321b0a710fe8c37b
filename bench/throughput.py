"""Throughput of the deployed student before and after merging int8, side by side in one run, with its ceiling.

Every model is the run's deployed (optimised) student, real weights, exported by ``bort export``,
served by ``bort serve`` on 127.0.0.1 (``serve`` settings of the profile) alone, one after the
other, and driven by the same bounded Locust profiles with one real test text per request:

- ``before``: dynamic int8 (``export/optimized/int8``), which the service never merges: the path
  ``bort export`` deployed and ``bort serve`` ran before static int8 (``serve.batching=auto``);
- ``fp32`` and ``int8_static``: merged (their answers do not depend on the batch) and run split
  by length (``runtime.batching``);
- ``after`` is the one of these ``bort export`` deployed (``deployed.json``), as measured on this CPU.

The machine is shared, so the models are measured in ``--rounds`` rounds, the order of the models
flipped every round, and each figure is the median over rounds; the before/after ratios are
medians of per-round ratios (each round's before and after ran minutes apart, not hours). Beside
every Locust figure: the batches the server formed (its call log) and the model's own throughput
at those batches, raw onnxruntime on the same texts with the same threads (``loadtest.ceiling``);
served requests/s as a fraction of it. Batch-1 latency is the 1-user p50, before against after,
paired by round. Then what padding costs at the batches the deployed model formed under the most
users: raw texts/s as one padded call, split by length, and one text per call, interleaved call by
call.

Writes ``bench/results/throughput.{json,md}``. Run (about 10 minutes with the defaults)::

    HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true BORT_CACHE=.cache/bort \\
        .venv/bin/python bench/throughput.py --run-dir runs/default
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort import config  # noqa: E402
from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions, read_manifest  # noqa: E402
from loadtest import ceiling, services  # noqa: E402
from loadtest.locust_run import Profile  # noqa: E402
from loadtest.measure import CeilingSettings, ModelPlan, measure_all  # noqa: E402
from runtime.batching import run_batch  # noqa: E402

log = logging.getLogger("bench.throughput")
OUT = ROOT / "bench" / "results"
VARIANTS = ("int8", "fp32", "int8_static")  # int8 (dynamic, never merged) is "before"
GOALS = {"rps_ratio_8": 1.5, "served_fraction_32": 0.70, "p50_ratio_1": 1.05}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a run with `bort export` done")
    p.add_argument("--profile", default="default", help="config profile for the serve settings")
    p.add_argument("--users", default="1,8,32")
    p.add_argument("--duration-s", type=int, default=15, help="measured seconds per model, user count and round")
    p.add_argument("--warmup-s", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="rounds; the model order flips every round")
    p.add_argument("--variants", default=",".join(VARIANTS), help="which exported precisions to serve")
    p.add_argument("--render-only", action="store_true", help="rebuild the tables from bench/results/throughput.json")
    p.add_argument("--after-set", action="append", default=[], metavar="serve.KEY=VALUE",
                   help="a serve setting for the deployed ('after') variant only, e.g. serve.ort_spin=false")
    p.add_argument("--tag", default="", help="write throughput-TAG.{json,md}")
    return p.parse_args(argv)


def plans(cfg: Any, export: Any, config_file: Path, variants: list[str],
          overrides: dict[str, tuple[Path, str]] | None = None) -> list[ModelPlan]:
    """One served plan per exported precision of the optimised role (`overrides`: precision ->
    (config file, how the label says it) for a variant served with other settings)."""
    roles = export.metrics["roles"]["optimized"]
    out = []
    for precision in variants:
        folder = export.dir / "optimized" / precision
        config, note = (overrides or {}).get(precision, (config_file, ""))
        spec = services.folder_spec(precision, folder, cfg.loadtest.port, config, cfg.loadtest.start_timeout_s)
        merged = "never merged" if precision == "int8" else "merged, split by length"
        out.append(ModelPlan(role=precision, spec=spec, folder=folder,
                             label=f"student ({roles['source']}) ONNX {precision}, {merged}{note}",
                             accuracy=roles["test_accuracy"].get(precision), accuracy_note="test accuracy of this file"))
    return out


def in_rounds(plans: list[ModelPlan], profiles: list[Profile], texts_file: Path, raw: Path, rounds: int,
              settings: CeilingSettings) -> list[dict[str, Any]]:
    """Every model under every profile, `rounds` times, the model order flipped each round."""
    out = []
    for r in range(rounds):
        order = plans if r % 2 == 0 else plans[::-1]
        out.append(measure_all(order, profiles, texts_file, raw / f"round{r}", ceiling_settings=settings))
        log.info("round %d of %d done", r + 1, rounds)
    return out


LEVEL_KEYS = ("rps", "p50_ms", "p95_ms", "p99_ms", "server_cpu_share", "locust_cpu_share")


def median_models(per_round: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model and user count: the median of each figure over rounds, failures summed, batches of the
    median-rps round, and every round's requests/s. The raw ceiling is the model's capacity, so its
    best round counts (other jobs on the machine only ever lower it); served / ceiling is the median
    requests/s over that."""
    models = {}
    for role in sorted(per_round[0], key=lambda r: VARIANTS.index(r) if r in VARIANTS else len(VARIANTS)):
        first, levels = per_round[0][role], {}
        for users in sorted(first["levels"], key=int):
            runs = [rnd[role]["levels"][users] for rnd in per_round]
            mid = sorted(runs, key=lambda lv: lv["rps"])[len(runs) // 2]
            level = {k: round(float(np.median([lv[k] for lv in runs if lv.get(k) is not None])), 3)
                     if any(lv.get(k) is not None for lv in runs) else None for k in LEVEL_KEYS}
            ceilings = [lv["ceiling_rps"] for lv in runs if lv.get("ceiling_rps")]
            level.update(failures=sum(lv["failures"] for lv in runs), requests=sum(lv["requests"] for lv in runs),
                         rps_rounds=[lv["rps"] for lv in runs], p50_rounds=[lv["p50_ms"] for lv in runs],
                         ceiling_rps=max(ceilings) if ceilings else None, ceiling_rounds=ceilings,
                         served_fraction=round(level["rps"] / max(ceilings), 3) if ceilings else None,
                         batches=mid.get("batches"), window=mid.get("window"), round=runs.index(mid))
            levels[users] = level
        models[role] = {**first, "levels": levels}
    return models


def paired(per_round: list[dict[str, Any]], before: str, after: str) -> dict[str, Any]:
    """Per user count, the median over rounds of after/before requests/s and p50 (paired by round)."""
    out: dict[str, Any] = {}
    for users in sorted(per_round[0][before]["levels"], key=int):
        rps = [r[after]["levels"][users]["rps"] / r[before]["levels"][users]["rps"] for r in per_round]
        p50 = [r[after]["levels"][users]["p50_ms"] / r[before]["levels"][users]["p50_ms"] for r in per_round]
        out[users] = {"rps_ratio": round(float(np.median(rps)), 3), "rps_ratio_rounds": [round(x, 3) for x in rps],
                      "p50_ratio": round(float(np.median(p50)), 3), "p50_ratio_rounds": [round(x, 3) for x in p50]}
    return out


def padding_costs(folder: Path, call_rows: np.ndarray, items: list[str], settings: CeilingSettings,
                  max_calls: int = 300, seed: int = 0) -> dict[str, Any]:
    """Raw texts/s at the batch sizes the server formed: one padded call, split by length, one text per call."""
    model = ceiling.RawModel(folder, settings.num_threads, settings.max_seq_len)
    rng = np.random.default_rng(seed)
    spent = {"padded": 0.0, "split_by_length": 0.0, "one_per_call": 0.0}
    texts = 0
    for size in rng.permutation(call_rows.astype(int))[:max_calls]:
        picked = [items[int(i)] for i in rng.integers(len(items), size=int(size))]
        feeds, singles = model.feeds(picked), [model.feeds([t]) for t in picked]
        for mode in spent:
            start = time.perf_counter()
            if mode == "one_per_call":
                for f in singles:
                    run_batch(model.session, f)
            else:
                run_batch(model.session, feeds, bucket=mode == "split_by_length")
            spent[mode] += time.perf_counter() - start
        texts += int(size)
    return {"calls": min(max_calls, len(call_rows)), "texts": texts,
            "texts_per_s": {mode: round(texts / s, 1) for mode, s in spent.items()}}


def goals(models: dict[str, Any], after: str, ratios: dict[str, Any]) -> dict[str, Any]:
    ratio8 = (ratios.get("8") or {}).get("rps_ratio")
    fraction32 = (models[after]["levels"].get("32") or {}).get("served_fraction")
    p50_1 = (ratios.get("1") or {}).get("p50_ratio")
    return {"rps_ratio_8": ratio8, "rps_ratio_8_met": bool(ratio8 and ratio8 >= GOALS["rps_ratio_8"]),
            "served_fraction_32": fraction32,
            "served_fraction_32_met": bool(fraction32 and fraction32 >= GOALS["served_fraction_32"]),
            "p50_ratio_1": p50_1, "p50_ratio_1_met": bool(p50_1 and p50_1 <= GOALS["p50_ratio_1"]),
            "failures": sum(lv["failures"] for m in models.values() for lv in m["levels"].values())}


def markdown(r: dict[str, Any]) -> str:
    m, g = r["machine"], r["goals"]
    md = ["# Throughput of the deployed student: before and after, with the raw ceiling", "",
          f"CPU {m['model']} ({m['usable_cores']} cores usable; ISA {', '.join(m['isa'])}); onnxruntime "
          f"{r['versions'].get('onnxruntime')}; serve threads {r['num_threads']}; weights: real (the student of "
          f"`{r['run_dir']}`, {r['source']}); requests: one real test text each (median {r['median_tokens']} tokens, "
          f"truncated to {r['max_seq_len']}); Locust on the same machine, 127.0.0.1, {r['duration_s']} s measured "
          f"after {r['warmup_s']} s warm-up per model, user count and round; {r['rounds']} rounds, model order flipped "
          f"each round, medians over rounds ({r['elapsed_s'] / 60:.1f} min in all). Before: `{r['before']}` (dynamic "
          f"int8, never merged: today's path). After: `{r['after']}` (what `bort export` deployed on this CPU: "
          f"{r['decision']}).", "",
          "| model | users | requests/s (median; each round) | p50 ms | p95 ms | p99 ms | failed | "
          "texts per call (mean / max) | padding (one call / served) | raw ceiling requests/s | served / ceiling | "
          "server CPU | Locust CPU |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in r["models"].values():
        for users, lv in model["levels"].items():
            b = lv.get("batches") or {}
            rounds = ", ".join(f"{x:.0f}" for x in lv["rps_rounds"])
            md.append(f"| {model['label']} | {users} | {lv['rps']:.1f} ({rounds}) | {lv['p50_ms']} | {lv['p95_ms']} | "
                      f"{lv['p99_ms']} | {lv['failures']} / {lv['requests']} | {b.get('mean_texts', 'n/a')} / "
                      f"{b.get('max_texts', 'n/a')} | {b.get('padding_share_merged', 'n/a')} / "
                      f"{b.get('padding_share_served', 'n/a')} | {lv.get('ceiling_rps', 'n/a')} | "
                      f"{lv.get('served_fraction', 'n/a')} | {lv.get('server_cpu_share')} | {lv.get('locust_cpu_share')} |")
    if r["after"] == r["before"]:
        return "\n".join(md + ["", f"`bort export` deployed `{r['before']}` on this CPU: after is before."]) + "\n"
    md += ["", f"## After (`{r['after']}`) against before (`{r['before']}`), paired by round", "",
           "| users | requests/s ratio (median; each round) | p50 ratio after/before (median; each round) |",
           "|---|---|---|"]
    for users, x in r["ratios"].items():
        md.append(f"| {users} | {x['rps_ratio']} ({', '.join(map(str, x['rps_ratio_rounds']))}) | {x['p50_ratio']} "
                  f"({', '.join(map(str, x['p50_ratio_rounds']))}) |")
    md += ["", "## Goals", "",
           "| goal | measured | met |", "|---|---|---|",
           f"| after / before requests/s at 8 users >= {GOALS['rps_ratio_8']}x | {g['rps_ratio_8']}x | "
           f"{'yes' if g['rps_ratio_8_met'] else 'no'} |",
           f"| after: served / raw ceiling at 32 users >= {GOALS['served_fraction_32']:.0%} | {g['served_fraction_32']} | "
           f"{'yes' if g['served_fraction_32_met'] else 'no'} |",
           f"| p50 at 1 user, after / before (paired by round) <= {GOALS['p50_ratio_1']} | {g['p50_ratio_1']} | "
           f"{'yes' if g['p50_ratio_1_met'] else 'no'} |",
           f"| 0 failed requests | {g['failures']} | {'yes' if g['failures'] == 0 else 'no'} |", ""]
    pad = r.get("padding")
    if pad:
        t = pad["texts_per_s"]
        md += ["## What padding costs", "",
               f"Raw onnxruntime on `{r['after']}`, {pad['calls']} calls at the sizes the server formed at "
               f"{pad['users']} users ({pad['texts']} test texts), interleaved call by call:", "",
               "| one padded call | split by length (served) | one text per call |", "|---|---|---|",
               f"| {t['padded']} texts/s | {t['split_by_length']} texts/s | {t['one_per_call']} texts/s |", ""]
    md += ["## The variants as `bort export` measured them (dev accuracy; speed on this CPU)", "",
           "| precision | dev accuracy | drop vs fp32, points | test accuracy | model p50 ms at batch 1 (median length) | "
           "model texts/s (bursts of dev texts) | served requests/s at 8 users (export's check) |",
           "|---|---|---|---|---|---|---|"]
    for precision, v in r["variants"].items():
        md.append(f"| {precision} | {v['dev_accuracy']} | {v['drop_points']} | {v['test_accuracy']} | "
                  f"{v['batch1_p50_ms']} | {v['load_texts_per_s']} | {v.get('served_rps')} |")
    return "\n".join(md) + "\n"


def variant_table(export: Any) -> dict[str, Any]:
    m = export.metrics["roles"]["optimized"]
    figures = (m.get("speed") or {}).get("figures") or {}
    dev = m.get("dev_accuracy") or {"fp32": m["fp32_dev_accuracy"], "int8": m.get("int8_dev_accuracy")}
    return {p: {"dev_accuracy": dev.get(p), "drop_points": (m.get("drop_points") or {}).get(p, 0.0 if p == "fp32" else None),
                "test_accuracy": m["test_accuracy"].get(p), **{k: (figures.get(p) or {}).get(k)
                                                               for k in ("batch1_p50_ms", "load_texts_per_s", "served_rps")}}
            for p in m["test_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.render_only:
        results = json.loads((OUT / "throughput.json").read_text(encoding="utf-8"))
        results["models"] = median_models(results["per_round"])
        results["goals"] = goals(results["models"], results["after"], results["ratios"]) if results["ratios"] else {}
        atomic_write_json(OUT / "throughput.json", results)
        atomic_write_text(OUT / "throughput.md", markdown(results))
        print(markdown(results))
        return 0
    cfg, run_dir, started = config.resolve([args.profile]), Path(args.run_dir), time.time()
    export = read_manifest(run_dir, "export")
    deployed = json.loads((export.dir / "deployed.json").read_text(encoding="utf-8"))["optimized"]
    work = OUT / ".throughput"
    config_file = services.write_config(cfg, work / "serve_config.yaml")
    from bort import data

    task = data.load_prepared(run_dir)
    texts_file = work / "texts.json"
    atomic_write_json(texts_file, {"texts": [e.text for e in task.test], "labels": list(task.labels)})
    variants = [v for v in args.variants.split(",") if v]
    before, after = "int8", deployed["precision"]
    overrides = {}
    if args.after_set:
        from bort import config as C

        after_cfg = C.resolve([args.profile], args.after_set)
        overrides[after] = (services.write_config(after_cfg, work / "serve_config_after.yaml"),
                            " (" + ", ".join(args.after_set) + ")")
    by_role = {p.role: p for p in plans(cfg, export, config_file, variants, overrides)}
    settings = CeilingSettings(cfg.serve.num_threads, cfg.serve.max_seq_len)
    profiles = [Profile(users=int(u), duration_s=args.duration_s, warmup_s=args.warmup_s, seed=cfg.seed)
                for u in args.users.split(",")]
    per_round = in_rounds(list(by_role.values()), profiles, texts_file, work / "raw", args.rounds, settings)
    models = median_models(per_round)
    ratios = paired(per_round, before, after) if after != before and after in models else {}
    top = str(max(int(u) for u in models[after]["levels"]))
    level = models[after]["levels"][top]
    calls = ceiling.read_calls(work / "raw" / f"round{level['round']}" / f"{after}_calls.csv", *level["window"])
    padding = {**padding_costs(by_role[after].folder, calls[:, 1], [e.text for e in task.test], settings),
               "users": int(top)} if calls.shape[0] and after != "int8" else None
    results = {"run_dir": str(run_dir), "source": export.metrics["roles"]["optimized"]["source"],
               "before": before, "after": after, "decision": deployed["decision"], "models": models,
               "ratios": ratios, "rounds": args.rounds, "per_round": per_round, "padding": padding,
               "variants": variant_table(export),
               "median_tokens": (export.metrics["roles"]["optimized"].get("speed") or {}).get("median_tokens"),
               "max_seq_len": cfg.serve.max_seq_len, "num_threads": cfg.serve.num_threads, "users": args.users,
               "duration_s": args.duration_s, "warmup_s": args.warmup_s, "machine": cpu_info(),
               "versions": library_versions(), "elapsed_s": round(time.time() - started, 1)}
    results["goals"] = goals(models, after, ratios) if ratios else {}
    results["after_settings"] = args.after_set
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"throughput-{args.tag}" if args.tag else "throughput"
    atomic_write_json(OUT / f"{name}.json", results)
    atomic_write_text(OUT / f"{name}.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
