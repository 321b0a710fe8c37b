"""Headline benchmark: served speed of the Bort shape against BERT-large, in one run, on this CPU.

Every model is served by ``bort serve`` (BentoML + ONNX Runtime, ``serve`` settings of the chosen
profile) on 127.0.0.1, alone, one after the other, and driven by the same bounded Locust profiles.

1. **Headline** (speed only, random weights): the BERT-large shape (24/16/1024/4096) in ONNX fp32
   against the Bort shape (4/8/1024/768) at the precision bort deploys on this CPU: of fp32,
   dynamic int8 and static int8, the one ``runtime.speed`` measures faster here (``bort export``'s
   rule; every variant counts as accurate, the weights being random). fp32 and static int8 are
   served merged (their answers do not depend on the batch), dynamic int8 never. Goals: >= 35x the
   requests/s at 8 users (on a CPU with AVX-512 VNNI) and >= 20x lower p50 at 1 user.
2. **Like for like**: the same two shapes fp32 against fp32, and dynamic int8 against dynamic int8:
   how much of the headline is the architecture and how much the precision.
3. With ``--run-dir``: the embedded default's real models from that run's ``bort export``,
   source (the fine-tuned labeller) against extracted (the deployed model), the same three ways.

Requests: the shape section sends texts of at least 128 tokens (the server truncates to
``serve.max_seq_len``), the protocol the published claims were made at; the real-model section
sends the task's real test texts. Beside every Locust figure, the batches the server formed and
the model's own throughput at them (raw onnxruntime, ``loadtest.ceiling``). Writes
``bench/results/headline_speedup.{json,md}``.

Run (about 10 minutes with the defaults; the shared CPU makes absolute times noisy, the ratios
come from one interleaved run)::

    HF_HUB_OFFLINE=1 BENTOML_DO_NOT_TRACK=true BORT_CACHE=.cache/bort \\
        .venv/bin/python bench/headline_speedup.py --run-dir runs/default
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort import config  # noqa: E402
from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions, read_manifest  # noqa: E402
from bort.config import RunConfig  # noqa: E402
from loadtest import report, services  # noqa: E402
from loadtest.locust_run import Profile  # noqa: E402
from loadtest.measure import CeilingSettings, ModelPlan, measure_all  # noqa: E402

log = logging.getLogger("headline_speedup")
OUT = ROOT / "bench" / "results"
BERT_LARGE, BORT = "24/16/1024/4096", "4/8/1024/768"
RPS_GOAL, P50_GOAL = 35.0, 20.0  # requests/s at the most users (a VNNI host), p50 at one user
# (comparison name, baseline key, optimised key)
COMPARISONS = (("headline: fp32 baseline vs the optimised model as deployed", "fp32", "int8"),
               ("like for like: fp32 vs fp32", "fp32", "fp32"),
               ("like for like: dynamic int8 vs dynamic int8", "int8", "int8"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=None, help="a run with `bort export` done: adds the real-model table")
    p.add_argument("--profile", default="default", help="config profile for the serve settings")
    p.add_argument("--users", default="1,8", help="user counts (default 1,8)")
    p.add_argument("--duration-s", type=int, default=30, help="measured seconds per model and user count")
    p.add_argument("--warmup-s", type=int, default=5)
    p.add_argument("--min-tokens", type=int, default=128, help="shape section: tokens per request text")
    p.add_argument("--skip-shapes", action="store_true", help="only the real-model table")
    p.add_argument("--baseline-shape", default=BERT_LARGE, help=f"L/A/H/I (default BERT-large {BERT_LARGE})")
    p.add_argument("--bort-shape", default=BORT, help=f"L/A/H/I (default Bort {BORT})")
    return p.parse_args(argv)


def long_texts(texts: list[str], tokenizer: Any, min_tokens: int, count: int = 200, seed: int = 0) -> list[str]:
    """Texts of at least `min_tokens` tokens, each a seeded concatenation of real test texts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        parts: list[str] = []
        while len(tokenizer(" ".join(parts))["input_ids"]) < min_tokens:
            parts.append(texts[int(rng.integers(len(texts)))])
        out.append(" ".join(parts))
    return out


def task_texts(cfg: RunConfig, run_dir: Path | None) -> tuple[list[str], list[str]]:
    """The test texts and labels of the run (or of the configured task, split here)."""
    from bort import data

    task = data.load_prepared(run_dir) if run_dir else data.load_task(cfg)
    return [e.text for e in task.test], list(task.labels)


def write_texts(path: Path, texts: list[str], labels: list[str]) -> Path:
    atomic_write_json(path, {"texts": texts, "labels": labels})
    return path


def shape_plans(cfg: RunConfig, labels: list[str], config_file: Path, work: Path, baseline_shape: str,
                bort_shape: str) -> list[ModelPlan]:
    port, timeout = cfg.loadtest.port, cfg.loadtest.start_timeout_s
    plans = []
    for name, shape, precisions in (("large", baseline_shape, ("fp32", "int8")),
                                    ("bort", bort_shape, ("fp32", "int8", "int8_static"))):
        for precision in precisions:
            role = f"{name}_{precision}"
            plans.append(services.shape_plan(shape, precision, labels, cfg, port, config_file, timeout, role=role))
    return plans


def real_plans(cfg: RunConfig, run_dir: Path, config_file: Path, work: Path) -> list[ModelPlan]:
    """Source (labeller) and extracted (deployed) models of a run's export, fp32 and int8 each."""
    export = read_manifest(run_dir, "export")
    finetune = read_manifest(run_dir, "finetune")
    acc = services.accuracies(finetune, export)
    roles = export.metrics.get("roles") or {}
    port, timeout = cfg.loadtest.port, cfg.loadtest.start_timeout_s
    plans = []
    for name, role, label, pytorch in (("source", "baseline", "source (labeller)", acc["labeller_pytorch"]),
                                       ("extracted", "optimized", f"extracted ({acc['optimized_name']})",
                                        (finetune.metrics.get("accuracy") or {}).get(acc["optimized_name"]))):
        for precision in ("fp32", "int8", "int8_static"):
            folder = export.dir / role / precision
            if not (folder / "serving.json").is_file():
                log.warning("%s has no %s export; skipped", role, precision)
                continue
            key = f"{name}_{precision}"
            served = ((roles.get(role) or {}).get("test_accuracy") or {}).get(precision)
            accuracy, note = ((served, f"test accuracy of this ONNX {precision} file") if served is not None
                              else (pytorch, "test accuracy of the PyTorch model (fp32)"))
            spec = services.folder_spec(key, folder, port, config_file, timeout)
            scores = ((roles.get(role) or {}).get("test_scores") or {}).get(precision)
            plans.append(ModelPlan(role=key, spec=spec, label=f"{label}, ONNX {precision}", accuracy=accuracy,
                                   accuracy_note=note, scores=scores, folder=folder))
    return plans


def deployed_precision(run_dir: Path) -> str:
    """The precision `bort export` deployed the optimised model at."""
    return (read_manifest(run_dir, "export").metrics.get("deployed") or {}).get("optimized", "int8")


def comparisons(models: dict[str, Any], base_name: str, opt_name: str,
                deployed_precision: str = "int8") -> list[dict[str, Any]]:
    """The three comparisons between two model families measured in `models` (the headline takes
    the optimised family at the precision bort deployed)."""
    rows = []
    for title, base_precision, opt_precision in COMPARISONS:
        if title.startswith("headline"):
            opt_precision = deployed_precision
        base, opt = f"{base_name}_{base_precision}", f"{opt_name}_{opt_precision}"
        if base not in models or opt not in models:
            continue
        ratios = report.compare(models[base]["levels"], models[opt]["levels"])
        top = report.headline(ratios)
        rows.append({"comparison": title, "baseline": models[base]["label"], "optimized": models[opt]["label"],
                     "ratios": ratios, **top,
                     "goal_met": bool(top["rps_ratio"] and top["p50_ratio"] and top["rps_ratio"] >= RPS_GOAL
                                      and top["p50_ratio"] >= P50_GOAL)})
    return rows


def markdown(results: dict[str, Any]) -> str:
    md = ["# Headline speedup: served, Locust on 127.0.0.1", "",
          f"CPU {results['machine']['model']} ({results['machine']['usable_cores']} cores usable; ISA "
          f"{', '.join(results['machine'].get('isa') or ['unknown'])}; int8 ratios differ by 2x or more between "
          "CPUs with and without AVX-512 VNNI), "
          f"onnxruntime {results['versions'].get('onnxruntime')}, serve threads {results['num_threads']}; "
          f"users {results['users']}, {results['duration_s']} s measured after {results['warmup_s']} s warm-up; "
          f"goals >= {RPS_GOAL:.0f}x requests/s at the most users (on a VNNI host) and >= {P50_GOAL:.0f}x lower p50 "
          "at one user. Ratios from one run; models measured one after the other.", ""]
    if results.get("decision"):
        md += [f"Bort shape deployed as `{results['decision']['precision']}` on this CPU: {results['decision']['why']}.",
               ""]
    for section in results["sections"]:
        md += [f"## {section['title']}", "", section["note"], "",
               "| comparison | baseline | optimised | requests/s ratio (users) | p50 ratio (users) | goals met |",
               "|---|---|---|---|---|---|"]
        for row in section["comparisons"]:
            md.append(f"| {row['comparison']} | {row['baseline']} | {row['optimized']} | "
                      f"{row['rps_ratio']}x ({row['rps_ratio_users']}) | {row['p50_ratio']}x ({row['p50_ratio_users']}) | "
                      f"{'yes' if row['goal_met'] else 'no'} |")
        judging = section.get("judging") or {}
        chance = judging.get("chance_metric") or "mcc"
        md += ["", f"| model | test accuracy | test {chance.upper() if chance == 'mcc' else chance} | users | "
               "requests/s | p50 ms | p95 ms | p99 ms | failed | texts per call | raw ceiling requests/s | "
               "served / ceiling |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for model in section["models"].values():
            acc, scores = model.get("accuracy"), model.get("scores") or {}
            speed_only = model.get("speed_only") or acc is None
            acc_text = "speed only" if speed_only else f"{100 * acc:.2f}%"
            chance_text = "" if speed_only or scores.get(chance) is None else f"{scores[chance]:.4f}"
            for users, lv in model["levels"].items():
                md.append(f"| {model['label']} | {acc_text} | {chance_text} | {users} | {lv['rps']:.1f} | "
                          f"{lv['p50_ms']} | {lv['p95_ms']} | {lv['p99_ms']} | {lv['failures']} / {lv['requests']} | "
                          f"{(lv.get('batches') or {}).get('mean_texts', 'n/a')} | {lv.get('ceiling_rps', 'n/a')} | "
                          f"{lv.get('served_fraction', 'n/a')} |")
        for base, label in (("majority", "always the majority class"), ("stratified", "stratified random")):
            b = (judging.get("baselines") or {}).get(base)
            if b:
                md.append(f"| *baseline: {label}* | {100 * b['accuracy']:.2f}% | {b[chance]:.4f} | | | | | | | | | |")
        notes = sorted({m["accuracy_note"] for m in section["models"].values() if m.get("accuracy_note")})
        if notes:
            md += ["", "Accuracy: " + "; ".join(notes) + "."]
        md.append("")
    return "\n".join(md)


def shape_decision(plans: list[ModelPlan], num_threads: int, seq_len: int) -> dict[str, Any]:
    """The precision bort would deploy the Bort shape at on this CPU (speed only: every variant counts as
    accurate), by ``bort export``'s rule on requests of `seq_len` tokens in bursts of 8."""
    from runtime import recipe, speed

    folders = {p.role.split("_", 1)[1]: p.folder for p in plans if p.role.startswith("bort_")}
    workload = speed.fixed_workload(recipe.vocab_size(folders["fp32"]), seq_len, 8,
                                    recipe.graph_inputs(folders["fp32"]))
    figures = speed.measure(folders, workload, num_threads)
    precision, why, verdicts = speed.choose(figures, {p: True for p in folders})
    return {"precision": precision, "why": why, "figures": figures, "verdicts": verdicts,
            "workload": workload.description}


def run_section(title: str, note: str, plans: list[ModelPlan], pairs: tuple[str, str], profiles: list[Profile],
                texts_file: Path, raw: Path, deployed_precision: str = "int8",
                judging: dict[str, Any] | None = None, ceiling: CeilingSettings | None = None) -> dict[str, Any]:
    models = measure_all(plans, profiles, texts_file, raw, ceiling_settings=ceiling)
    return {"title": title, "note": note, "models": models, "judging": judging,
            "comparisons": comparisons(models, *pairs, deployed_precision=deployed_precision)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = config.resolve([args.profile])
    run_dir = Path(args.run_dir) if args.run_dir else None
    work = OUT / ".headline_speedup"
    users = [int(u) for u in args.users.split(",")]
    profiles = [Profile(users=u, duration_s=args.duration_s, warmup_s=args.warmup_s, seed=cfg.seed) for u in users]
    config_file = services.write_config(cfg, work / "serve_config.yaml")
    texts, labels = task_texts(cfg, run_dir)
    started, sections, decision = time.time(), [], None
    ceiling = CeilingSettings(cfg.serve.num_threads, cfg.serve.max_seq_len)
    if not args.skip_shapes:
        from bort import assets, families

        tokenizer = families.load_tokenizer(assets.model_dir("minilm"))
        texts_file = write_texts(work / "long_texts.json", long_texts(texts, tokenizer, args.min_tokens), labels)
        plans = shape_plans(cfg, labels, config_file, work, args.baseline_shape, args.bort_shape)
        decision = shape_decision(plans, cfg.serve.num_threads, min(args.min_tokens, cfg.serve.max_seq_len))
        log.info("Bort shape deployed as %s: %s", decision["precision"], decision["why"])
        sections.append(run_section(
            "Architecture only (speed only: random weights)",
            f"Shape {args.baseline_shape} (BERT-large: {BERT_LARGE}) against shape {args.bort_shape} (Bort: {BORT}); "
            f"requests of >= {args.min_tokens} tokens, truncated to {cfg.serve.max_seq_len}. Random weights: "
            "speed only, no accuracy.",
            plans, ("large", "bort"), profiles, texts_file, work / "raw_shapes",
            deployed_precision=decision["precision"], ceiling=ceiling))
    if run_dir is not None:
        texts_file = write_texts(work / "task_texts.json", texts, labels)
        sections.append(run_section(
            f"Real models of {run_dir} (source against extracted)",
            "The source model fine-tuned on the task (labeller) against the extracted model bort deployed; "
            "requests are the task's real test texts.",
            real_plans(cfg, run_dir, config_file, work), ("source", "extracted"), profiles, texts_file,
            work / "raw_real", deployed_precision=deployed_precision(run_dir),
            judging=services.judging(read_manifest(run_dir, "finetune")), ceiling=ceiling))
    results = {"sections": sections, "decision": decision, "users": users, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
               "num_threads": cfg.serve.num_threads, "machine": cpu_info(), "versions": library_versions(),
               "elapsed_s": round(time.time() - started, 1)}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "headline_speedup.json", results)
    atomic_write_text(OUT / "headline_speedup.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
