"""Agora where data is scarce: test accuracy against training size, one line per arm, over seeds.

For each (task, training size, seed) the task is split with the seed, the training split is cut to
a class-stratified subset of that size, dev is capped at the same size (at least ``--min-dev``,
200), and the test split stays whole and untouched (the guard refuses any test text in training
or selection). The labeller is fine-tuned on the same subset: it is the user's model on the
user's data. Then every arm trains the same student (``--student-dir``, default MiniLM-L6's layers
0/2/5, the reference student of ``bench/agora_tasks.py``):

- ``plain``: the student fine-tuned on the subset (the control);
- ``distil``: task-specific distillation (the finetune stage's ``distil``): the student trained to
  the labeller's soft outputs on the subset and on G's perturbations of it;
- ``enumeration``: Agora's round 1 alone: Θ tried, the best on dev kept, no new points;
- ``more_epochs``: Agora's warm-started path re-run without the new points;
- ``extra_seeds``: round 1's best θ re-trained with as many extra seeds as Agora trained models
  after round 1, the best on dev kept (Agora picks among more trained models than enumeration);
- ``agora``: the loop as configured;
- ``identity``: the loop with G = identity (the mistaken dev texts themselves, labelled by the labeller);
- ``random_dev``: the loop with G applied to as many random dev texts instead of the mistakes;
- ``gold``: the loop with the new points labelled by their origin's gold label (a ceiling: it reads
  dev labels, which Agora must not).

Every (task, size, seed, arm) is stored as it finishes in its run folder, so an interrupted curve
resumes. Paired differences per seed (``agora`` minus each control) come with the table. Results:
``bench/results/agora_curve[-TAG].{json,md,png}``. A lever is a config override applied to every
arm, e.g. ``--set finetune.warm_start=false --set finetune.round_epochs=2 --tag cold``. To try a
lever on Agora alone against controls already run, ``--arms agora --baseline-tag min300``: the
cell starts from the baseline cell's labeller, plain and distil (same split, seed and settings)
and reads the arms it does not run from the baseline's cells.

Rotten Tomatoes at 250-1,000 training texts, 5 seeds, about 2 hours on 2 cores::

    nice .venv/bin/python bench/agora_curve.py --tasks rotten_tomatoes --sizes 250,500,1000 --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agora_tasks import GLUE, STUDENTS, make_student  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ARMS = ("plain", "distil", "enumeration", "more_epochs", "extra_seeds", "agora", "identity", "random_dev", "gold")
DISTIL_VS = ("plain", "enumeration", "agora")  # distil's paired differences in the table
LOOPS = ("agora", "identity", "random_dev", "gold")  # arms that run Agora's loop
# task -> (bort task name, task settings, sizes the issue asks for)
TASKS = {"rotten_tomatoes": ("rotten_tomatoes", [], (250, 500, 1000, 2500, 0)),
         "bbc_news": ("bbc_news", ["finetune.seq_len=128"], (100, 250, 500, 0)),
         "sst2": (str(GLUE / "SST-2"), [], (500, 2000))}
log = logging.getLogger("agora_curve")


class IdentityG:
    """G = identity: each mistake itself is the new point (the labeller still labels it)."""

    def __call__(self, examples: list[Any], rng: np.random.Generator) -> tuple[list[Any], Any]:
        from agora.transform import GStats, NewPoint

        points = [NewPoint(e.text, e.text_pair, i, 1.0) for i, e in enumerate(examples)]
        return points, GStats(inputs=len(examples), candidates=len(points), in_band=len(points), made=len(points))


class RandomDevG:
    """G applied to as many random dev texts as there are mistakes, instead of the mistakes."""

    def __init__(self, g: Any, dev: list[Any], seed: int):
        self.g, self.dev, self.rng = g, dev, np.random.default_rng([seed, 0xDE7])

    def __call__(self, examples: list[Any], rng: np.random.Generator) -> tuple[list[Any], Any]:
        picked = [self.dev[i] for i in self.rng.choice(len(self.dev), size=min(len(examples), len(self.dev)),
                                                       replace=False)]
        return self.g(picked, rng)


class GoldG:
    """G as configured, remembering each new point's origin gold label for :meth:`label`."""

    def __init__(self, g: Any, n_labels: int):
        self.g, self.n_labels, self.gold = g, n_labels, {}

    def __call__(self, examples: list[Any], rng: np.random.Generator) -> tuple[list[Any], Any]:
        points, stats = self.g(examples, rng)
        for p in points:
            self.gold[(p.text, p.text_pair)] = examples[p.origin].label
        return points, stats

    def label(self, points: list[Any]) -> np.ndarray:
        out = np.zeros((len(points), self.n_labels), dtype=np.float32)
        for i, p in enumerate(points):
            out[i, self.gold[(p.text, p.text_pair)]] = 1.0
        return out


def config_for(task: str, size: int, seed: int, args: argparse.Namespace, student: Path) -> Any:
    from bort import config as C

    name, presets, _ = TASKS[task]
    dev_rows = max(args.min_dev, size) if size else 0
    return C.resolve([args.profile], [f"task.name={name}", f"seed={seed}", f"task.max_train_rows={size}",
                                      f"task.max_dev_rows={dev_rows}", f"finetune.student={student}",
                                      *presets, *args.set, *([f"finetune.num_threads={args.num_threads}"]
                                                             if args.num_threads else [])])


def run_cell(task: str, size: int, seed: int, args: argparse.Namespace, student: Path) -> dict[str, Any]:
    """Every arm of one (task, size, seed); each arm's result is stored as it finishes (resume)."""
    from agora import loop, stage
    from agora.guard import Guard
    from bort import data
    from bort import families as F
    from bort.artifacts import atomic_write_json, sha256_file

    cfg = config_for(task, size, seed, args, student)
    run_dir = _cell_dir(task, size, seed, args.tag)
    out = run_dir / "finetune"
    cell_file = run_dir / "cell.json"
    if args.baseline_tag and not run_dir.exists():  # the lever run starts from the baseline's parts
        shutil.copytree(_cell_dir(task, size, seed, args.baseline_tag) / "finetune", out, copy_function=os.link,
                        ignore=shutil.ignore_patterns("checkpoints"))
    cell = json.loads(cell_file.read_text()) if cell_file.is_file() else {}
    if all(a in cell.get("test", {}) for a in _wanted(args)) or cell.get("error"):
        return cell
    f = cfg.finetune
    task_data = data.prepare(cfg, run_dir)
    guard = Guard(task_data.test)
    train, dev = guard.filter(task_data.train, "train"), guard.filter(task_data.dev, "dev")
    judge = stage.Judge.for_task(cfg, task_data, dev)
    source = F.resolve_source(cfg.source.model)
    cell.update({"task": task, "size": len(train), "dev": len(dev), "test_rows": len(task_data.test), "seed": seed,
                 "metric": judge.metric, "baselines": judge.test_baselines, "test": cell.get("test", {})})
    labeller = stage.ensure_labeller(cfg, out, source, task_data.labels, train, dev, guard)
    cell["test"]["labeller"] = _test(labeller.model, labeller.tokenizer, task_data.test, f)
    try:
        stage.check_labeller(labeller, cfg, judge)
    except stage.LabellerTooWeakError as e:
        cell["error"] = f"labeller refused: {e}"
        atomic_write_json(cell_file, cell)
        return cell
    upstream = "folder:" + sha256_file(student / "model.safetensors")[:16]
    plain = stage.ensure_plain(cfg, out, student, upstream, task_data.labels, train, dev, guard)
    cell["test"]["plain"] = _test(plain.model, plain.tokenizer, task_data.test, f)
    transform = stage.make_transform(cfg, source, labeller, guard)
    if "distil" not in cell["test"]:
        distil = stage.ensure_distilled(cfg, out, student, upstream, task_data.labels, train, dev, guard, labeller,
                                        transform)
        cell["test"]["distil"] = _test(distil.model, distil.tokenizer, task_data.test, f)
        atomic_write_json(cell_file, cell)
    inputs = stage.agora_inputs(cfg, student, task_data.labels, train, dev, guard, labeller, plain, judge.metric,
                                transform)
    results = {}
    for arm in [a for a in LOOPS if a in _wanted(args)]:  # agora's loop always runs (from its stored state
        if arm in cell["test"] and arm != "agora":            # when done): the controls read it
            continue
        arm_inputs = _arm_inputs(arm, inputs, transform, dev, seed, len(task_data.labels))
        started = time.time()
        results[arm] = loop.run_agora(arm_inputs, cfg, run_dir / "checkpoints" / arm, f"{arm}-{cfg.seed}")
        cell["test"][arm] = _test(results[arm].model, plain.tokenizer, task_data.test, f)
        cell.setdefault("loop", {})[arm] = {"rounds": len(results[arm].rows), "points": len(results[arm].points),
                                            "seconds": round(time.time() - started, 1),
                                            "labeller_agreement": [r.get("labeller_agreement")
                                                                   for r in results[arm].rows]}
        if arm == "agora":
            cell["test"]["enumeration"] = _test(results[arm].round1_model, plain.tokenizer, task_data.test, f)
        atomic_write_json(cell_file, cell)
    agora = results["agora"]
    if "more_epochs" not in cell["test"] and "more_epochs" in _wanted(args):
        cell["test"]["more_epochs"] = _test(loop.more_epochs_only(inputs, cfg, agora), plain.tokenizer,
                                            task_data.test, f)
        atomic_write_json(cell_file, cell)
    if "extra_seeds" not in cell["test"] and "extra_seeds" in _wanted(args):
        cell["test"]["extra_seeds"] = _extra_seeds(inputs, cfg, agora, task_data.test)
        atomic_write_json(cell_file, cell)
    return cell


def _cell_dir(task: str, size: int, seed: int, tag: str) -> Path:
    return RESULTS / "agora_curve_runs" / f"{task}-{size or 'all'}-seed{seed}{'-' + tag if tag else ''}"


def _wanted(args: argparse.Namespace) -> tuple[str, ...]:
    """The arms this run computes: all, or with ``--arms`` those loops (plus what every cell has)."""
    if not args.arms:
        return ARMS
    return ("plain", "distil", "enumeration", *args.arms.split(","))


def with_baseline(cell: dict[str, Any], size: int, args: argparse.Namespace) -> dict[str, Any]:
    """`cell` with the arms it did not run read from the baseline tag's cell (same split and seed)."""
    if not args.baseline_tag or cell.get("error"):
        return cell
    base_file = _cell_dir(cell["task"], size, cell["seed"], args.baseline_tag) / "cell.json"
    base = json.loads(base_file.read_text()) if base_file.is_file() else {}
    return {**cell, "test": {**base.get("test", {}), **cell["test"]}}


def _arm_inputs(arm: str, inputs: Any, transform: Any, dev: list[Any], seed: int, n_labels: int) -> Any:
    if arm == "identity":
        return replace(inputs, transform=IdentityG())
    if arm == "random_dev":
        return replace(inputs, transform=RandomDevG(transform, dev, seed))
    if arm == "gold":
        g = GoldG(transform, n_labels)
        return replace(inputs, transform=g, labeller=g.label)
    return inputs


def _extra_seeds(inputs: Any, cfg: Any, agora: Any, test: list[Any]) -> dict[str, float]:
    """Round 1's best θ with as many extra seeds as Agora trained models after round 1; best on dev."""
    from agora import loop
    from agora import train as T

    f = cfg.finetune
    extra = sum(len(r["thetas"]) for r in agora.rows[1:])
    theta = {t.name: t for t in loop.thetas_from_config(cfg)}[agora.rows[0]["best_theta"]]
    best, best_score = agora.round1_model, agora.rows[0]["dev_by_theta"][agora.rows[0]["best_theta"]]
    for k in range(1, extra + 1):
        model = T.new_classifier(inputs.student_dir, inputs.labels, theta.spec.seed + 1000 * k)
        T.fine_tune(model, inputs.tokenizer, inputs.train, replace(theta.spec, seed=theta.spec.seed + 1000 * k),
                    f.seq_len, inputs.guard, desc=f"extra seed {k}")
        score = loop.selection_score(inputs, T.evaluate(model, inputs.tokenizer, inputs.dev, f.seq_len,
                                                        f.eval_batch_size, inputs.guard), inputs.metric)
        if score > best_score:
            best, best_score = copy.deepcopy(model), score
    return {**_test(best, inputs.tokenizer, test, f), "extra_models": extra}


def _test(model: Any, tokenizer: Any, test: list[Any], f: Any) -> dict[str, float]:
    from agora import train as T

    scored = T.evaluate(model, tokenizer, test, f.seq_len, f.eval_batch_size)
    return {k: scored[k] for k in ("accuracy", "macro_f1", "mcc")}


def _stat(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (task, size): each arm's test accuracy mean ± std, and agora minus each control per seed."""
    out: dict[str, Any] = {}
    for cell in cells:
        if cell.get("error") or not all(a in cell.get("test", {}) for a in ARMS):
            continue
        key = f"{cell['task']}@{cell['size']}"
        row = out.setdefault(key, {"task": cell["task"], "size": cell["size"], "dev": cell["dev"], "cells": []})
        row["cells"].append(cell)
    for row in out.values():
        cells = row.pop("cells")
        row["seeds"] = [c["seed"] for c in cells]
        row["accuracy"] = {a: _stat([c["test"][a]["accuracy"] for c in cells]) for a in ("labeller", *ARMS)}
        row["majority"] = cells[0]["baselines"]["majority"]["accuracy"]
        row["agora_minus"] = {a: [round(100 * (c["test"]["agora"]["accuracy"] - c["test"][a]["accuracy"]), 2)
                                  for c in cells] for a in ("plain", "enumeration", "identity", "random_dev",
                                                            "more_epochs", "extra_seeds")}
        row["distil_minus"] = {a: [round(100 * (c["test"]["distil"]["accuracy"] - c["test"][a]["accuracy"]), 2)
                                   for c in cells] for a in DISTIL_VS}
        row["goal"] = all(min(row["agora_minus"][a]) > 0 and statistics.fmean(row["agora_minus"][a]) >= 1.0
                          for a in ("identity", "random_dev", "enumeration"))
    return out


def markdown(summary: dict[str, Any], args: argparse.Namespace, stopped: list[dict[str, Any]] | None = None) -> str:
    lines = ["# Agora against training size: test accuracy (%), mean ± std over seeds", "",
             f"Student `{args.student_dir or 'extract (MiniLM-L6 layers 0/2/5)'}`; profile `{args.profile}`; "
             f"overrides {args.set or 'none'}; dev capped at max(train, {args.min_dev}); test whole and untouched. "
             "Goal (issue 19): agora beats identity, random dev and Θ enumeration by >= 1.0 point on the mean "
             "and on every seed, at two or more sizes <= 1,000.", "",
             *([f"Run with the lever: {args.arms} and Θ enumeration (round 1 of its loop), plain and distil from "
                f"the `{args.baseline_tag}` cells' stored models; every other arm is read from those cells.", ""]
               if args.arms else []),
             "| task | train | dev | majority | labeller | " + " | ".join(ARMS) + " | goal met |",
             "|---|---|---|---|---|" + "---|" * len(ARMS) + "---|"]
    for row in sorted(summary.values(), key=lambda r: (r["task"], r["size"])):
        acc = row["accuracy"]
        cells = " | ".join(f"{100 * acc[a]['mean']:.2f} ± {100 * acc[a]['std']:.2f}" for a in ("labeller", *ARMS))
        lines.append(f"| {row['task']} | {row['size']} | {row['dev']} | {100 * row['majority']:.2f} | {cells} | "
                     f"{'yes' if row['goal'] else 'no'} |")
    lines += ["", "Agora minus each control, points of test accuracy, per seed (seeds in order):", "",
              "| task | train | " + " | ".join(f"− {a}" for a in ("plain", "enumeration", "identity", "random_dev",
                                                                  "more_epochs", "extra_seeds")) + " |",
              "|---|---|" + "---|" * 6]
    for row in sorted(summary.values(), key=lambda r: (r["task"], r["size"])):
        diffs = " | ".join(", ".join(f"{d:+.2f}" for d in row["agora_minus"][a])
                           for a in ("plain", "enumeration", "identity", "random_dev", "more_epochs", "extra_seeds"))
        lines.append(f"| {row['task']} | {row['size']} | {diffs} |")
    lines += ["", "Distillation minus each, points of test accuracy, per seed (what `bort finetune`'s recipe reads):",
              "", "| task | train | " + " | ".join(f"− {a}" for a in DISTIL_VS) + " |", "|---|---|" + "---|" * len(DISTIL_VS)]
    for row in sorted(summary.values(), key=lambda r: (r["task"], r["size"])):
        diffs = " | ".join(", ".join(f"{d:+.2f}" for d in row["distil_minus"][a]) for a in DISTIL_VS)
        lines.append(f"| {row['task']} | {row['size']} | {diffs} |")
    refused = [c for c in stopped or [] if c.get("error")]
    if refused:  # a cell that stopped says why, so a table without its row is not read as a missing run
        lines += ["", "Cells without a result (the labeller's test figures, and why the cell stopped):", "",
                  "| task | train | seed | labeller accuracy | labeller MCC | stopped because |", "|---|---|---|---|---|---|"]
        for c in sorted(refused, key=lambda c: (c["task"], c["size"], c["seed"])):
            lab = c.get("test", {}).get("labeller", {})
            acc, mcc = (f"{100 * lab[k]:.2f}" if k in lab else "" for k in ("accuracy", "mcc"))
            lines.append(f"| {c['task']} | {c['size']} | {c['seed']} | {acc} | {mcc} | {c['error'].split(': the labeller (')[0]} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy against training size, one line per arm (error bars: std over seeds), a panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in summary.values()})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.0 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = sorted((r for r in summary.values() if r["task"] == task), key=lambda r: r["size"])
        sizes = [r["size"] for r in rows]
        for arm in ("labeller", *ARMS):
            ax.errorbar(sizes, [100 * r["accuracy"][arm]["mean"] for r in rows],
                        yerr=[100 * r["accuracy"][arm]["std"] for r in rows], label=arm, capsize=2, marker="o",
                        lw=2.2 if arm == "agora" else 1.0, ls="--" if arm in ("labeller", "gold") else "-")
        ax.plot(sizes, [100 * r["majority"] for r in rows], color="0.5", ls=":", label="majority class")
        ax.set(xscale="log", xlabel="training texts", ylabel="test accuracy (%)", title=task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="rotten_tomatoes")
    parser.add_argument("--sizes", default="", help="comma-separated training sizes (0: all); default: the task's")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--student-dir", default="", help="an encoder folder (default: MiniLM-L6 layers 0/2/5)")
    parser.add_argument("--min-dev", type=int, default=200)
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="a lever: config override for every arm")
    parser.add_argument("--tag", default="")
    parser.add_argument("--arms", default="", help="comma-separated loop arms to run (default: every arm)")
    parser.add_argument("--baseline-tag", default="", help="with --arms: the tag whose cells give the other arms")
    args = parser.parse_args(argv)
    if bool(args.arms) != bool(args.baseline_tag):
        parser.error("--arms and --baseline-tag go together: a lever run on some arms reads the rest from a baseline")
    unknown = set(args.arms.split(",")) - set(LOOPS) if args.arms else set()
    if unknown:
        parser.error(f"--arms: {sorted(unknown)} are not loop arms; choose from {', '.join(LOOPS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bort.artifacts import atomic_write_json, atomic_write_text

    source, layers, folder = STUDENTS["extract"]
    student = Path(args.student_dir) if args.student_dir else make_student(RESULTS / folder, source, layers)
    cells = []
    for task in args.tasks.split(","):
        sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(TASKS[task][2])
        for size in sizes:
            for seed in (int(s) for s in args.seeds.split(",")):
                cells.append(with_baseline(run_cell(task, size, seed, args, student), size, args))
                summary = summarise(cells)
                suffix = f"-{args.tag}" if args.tag else ""
                atomic_write_json(RESULTS / f"agora_curve{suffix}.json", {"args": vars(args), "cells": cells,
                                                                          "summary": summary})
                atomic_write_text(RESULTS / f"agora_curve{suffix}.md", markdown(summary, args, cells))
                if summary:
                    plot(summary, RESULTS / f"agora_curve{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
