"""Inherited vs random initialisation of the extracted student, at the same distillation budget.

On the embedded default (all-MiniLM-L6-v2 -> a smaller shape, Rotten Tomatoes text as corpus),
the student is distilled twice with ``bort pretrain``'s own code, once initialised from the
source's weights (``inherit``) and once at random as Bort did (``random``), each for the same
time budget. Reported for each:

* held-out distillation loss and the mean cosine between student and teacher mean-pooled
  sentence embeddings on held-out corpus sentences (target: >= 0.90 for inherit; inherit > random);
* a logistic-regression probe (scikit-learn) on frozen mean-pooled embeddings: trained on the
  Rotten Tomatoes train split, accuracy on its test split, for the teacher and both students.

Writes ``bench/results/pretrain_init.{json,md}``. Run (about 2 x budget + 2 minutes)::

    HF_HUB_OFFLINE=1 BORT_CACHE=.cache/bort OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python bench/pretrain_init.py --budget-s 240
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

from bort import config  # noqa: E402
from bort import families as F  # noqa: E402
from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions  # noqa: E402
from bort.config import RunConfig  # noqa: E402

log = logging.getLogger("pretrain_init")
OUT = ROOT / "bench" / "results"
TARGET_COSINE = 0.90


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="3/12/384/1536", help="student D/A/H/I (default 3/12/384/1536)")
    p.add_argument("--budget-s", type=float, default=240.0, help="distillation seconds per initialisation")
    p.add_argument("--profile", default="default", help="config profile (task, corpus, pretrain settings)")
    p.add_argument("--probe-train-rows", type=int, default=2000, help="cap on probe training rows (0: all)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def probe_accuracy(model: Any, tokenizer: Any, train: list[Any], test: list[Any], seed: int) -> float:
    """Logistic regression on frozen normalised mean-pooled embeddings: test accuracy."""
    from sklearn.linear_model import LogisticRegression

    x_train = F.embed(model, tokenizer, [e.text for e in train], max_len=64).numpy()
    x_test = F.embed(model, tokenizer, [e.text for e in test], max_len=64).numpy()
    clf = LogisticRegression(max_iter=2000, C=10.0, random_state=seed)
    clf.fit(x_train, [e.label for e in train])
    return float(clf.score(x_test, [e.label for e in test]))


def run_init(cfg: RunConfig, init: str, source: F.Source, arch: F.Arch, corpus: tuple[list[str], list[str]]) -> Any:
    """Distil one student with `init` (no checkpoints), as `bort pretrain` does."""

    from pretrain import stage as pretrain

    cfg = cfg.replace(pretrain={"init": init})
    log.info("distilling %s (%s) for %.0f s", arch.label(), init, cfg.pretrain.time_budget_s)
    return pretrain.distil(cfg, source, arch, *corpus, checkpoints=None)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from bort import data
    from bort.corpus import corpus_texts

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arch = F.Arch.parse(args.shape)
    cfg = config.resolve([args.profile], [
        f"pretrain.layers={arch.layers}", f"pretrain.heads={arch.heads}", f"pretrain.hidden={arch.hidden}",
        f"pretrain.intermediate={arch.intermediate}", f"pretrain.time_budget_s={args.budget_s}",
        "pretrain.max_steps=100000", *args.overrides])
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        task = data.prepare(cfg, Path(tmp))
    corpus = corpus_texts(cfg, task)
    source = F.resolve_source(cfg.source.model)
    rng = np.random.default_rng(cfg.seed)
    probe_train = task.train if not args.probe_train_rows else [
        task.train[i] for i in sorted(rng.permutation(len(task.train))[:args.probe_train_rows])]
    rows = {}
    for init in ("inherit", "random"):
        outcome = run_init(cfg, init, source, arch, corpus)
        r = outcome.result
        rows[init] = {"heldout_loss": r.heldout_loss, "embedding_cosine": outcome.embedding_cosine,
                      "embedding_cosine_at_init": outcome.initial_cosine, "steps": r.steps, "tokens": r.tokens,
                      "seconds": round(r.seconds, 1), "source_layers": outcome.layers,
                      "probe_accuracy": probe_accuracy(outcome.distiller.student.eval(), outcome.tokenizer,
                                                       probe_train, task.test, cfg.seed)}
    teacher = F.load_encoder(source.folder)
    rows["teacher"] = {"probe_accuracy": probe_accuracy(teacher, F.load_tokenizer(source.folder), probe_train,
                                                        task.test, cfg.seed)}
    result = {"source": f"{source.name} ({source.arch.label()})", "student": arch.label(), "budget_s": args.budget_s,
              "task": cfg.task.name, "probe_train_rows": len(probe_train), "test_rows": len(task.test),
              "corpus_texts": {"train": len(corpus[0]), "heldout": len(corpus[1])},
              "pretrain": cfg.to_dict()["pretrain"], "results": rows, "torch_threads": torch.get_num_threads(),
              "target_cosine": TARGET_COSINE,
              "inherit_meets_target": rows["inherit"]["embedding_cosine"] >= TARGET_COSINE,
              "inherit_beats_random": rows["inherit"]["embedding_cosine"] > rows["random"]["embedding_cosine"],
              "machine": cpu_info(), "versions": library_versions(), "elapsed_s": round(time.time() - started, 1)}
    out = Path(args.out)
    atomic_write_json(out / "pretrain_init.json", result)
    atomic_write_text(out / "pretrain_init.md", markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    rows = r["results"]
    lines = [f"# Inherited vs random initialisation ({r['student']} from {r['source']})", "",
             f"Same budget: {r['budget_s']:.0f} s of distillation each on {r['corpus_texts']['train']} "
             f"{r['task']} corpus texts, {r['torch_threads']} torch threads, shared CPU "
             f"({r['machine']['model']}). Probe: logistic regression on frozen mean-pooled embeddings, "
             f"{r['probe_train_rows']} train rows, {r['test_rows']} test rows.", "",
             "| model | steps | tokens | held-out loss | cosine at init | cosine after | probe test acc. |",
             "|---|---|---|---|---|---|---|"]
    for name in ("inherit", "random"):
        x = rows[name]
        lines.append(f"| student, {name} | {x['steps']} | {x['tokens']:,} | {x['heldout_loss']:.4f} | "
                     f"{x['embedding_cosine_at_init']:.4f} | {x['embedding_cosine']:.4f} | {x['probe_accuracy']:.4f} |")
    lines.append(f"| teacher | | | | 1 | 1 | {rows['teacher']['probe_accuracy']:.4f} |")
    lines += ["", f"- inherit cosine >= {r['target_cosine']}: **{r['inherit_meets_target']}**; "
              f"inherit beats random: **{r['inherit_beats_random']}**",
              f"- total wall time {r['elapsed_s']:.0f} s", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
