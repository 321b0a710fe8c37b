"""Training step time in fp32 against bf16 mixed precision, side by side, through the product's own loops.

Each case runs a few optimiser steps through the code the stages use (``agora.train.fine_tune`` for a
fine-tune, ``distillation.trainer.train`` with the real teacher for pretraining), alternating fp32 and
bf16 rounds so both see the same machine state; the figure is the median seconds per step of each,
and their ratio. Real weights (the embedded sources); the pretraining student's weights are random
(its step time does not depend on them). Texts are long enough to fill the sequence length, so every
batch is batch x seq_len tokens.

Writes ``bench/results/train_precision.{json,md}``. Run (about 8 minutes on 2 cores)::

    HF_HUB_OFFLINE=1 BORT_CACHE=.cache/bort .venv/bin/python bench/train_precision.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bort import devices  # noqa: E402
from bort import families as F  # noqa: E402
from bort.artifacts import atomic_write_json, atomic_write_text, cpu_info, library_versions  # noqa: E402

log = logging.getLogger("train_precision")
OUT = ROOT / "bench" / "results"
# (name, what, source, batch, seq_len): the stages' own sizes
FINE_TUNES = [
    ("labeller, BBC News (base + long-texts)", "mpnet", 16, 256),
    ("labeller, Rotten Tomatoes (base)", "mpnet", 32, 64),
    ("labeller, embedded default", "minilm", 32, 64),
]
PRETRAIN = ("pretraining, base (MPNet teacher -> 2/6/384/768)", "mpnet", "2/6/384/768", 32, 128)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="optimiser steps per round")
    p.add_argument("--rounds", type=int, default=3, help="alternating fp32/bf16 rounds per case")
    p.add_argument("--out", default=str(OUT))
    return p.parse_args(argv)


def long_text(i: int) -> str:
    return " ".join(f"word{(i * 7 + j) % 97} of the story" for j in range(200))


def fine_tune_step_s(source: F.Source, batch: int, seq_len: int, steps: int, precision: str) -> float:
    """Seconds per step of `steps` steps of ``fine_tune`` (a fresh classifier each time)."""
    from agora import train as T
    from agora.guard import Guard
    from bort.task import Example

    examples = [Example(long_text(i), i % 2) for i in range(batch * steps)]
    tokenizer = F.load_tokenizer(source.folder)
    model = T.new_classifier(source.folder, ["a", "b"], seed=0)
    T.set_device("cpu", precision)
    try:
        spec = T.TrainSpec(lr=2e-5, weight_decay=0.01, warmup_ratio=0.1, epochs=1, batch_size=batch, seed=0)
        return T.fine_tune(model, tokenizer, examples, spec, seq_len, Guard([]))["seconds"] / steps
    finally:
        T.set_device("cpu")


def pretrain_step_s(source: F.Source, shape: str, batch: int, seq_len: int, steps: int, precision: str,
                    teacher: Any) -> float:
    """Seconds per step of ``trainer.train``: the teacher's forward on the batch, the student's step."""
    from distillation import batches as B
    from distillation import losses as D
    from distillation import trainer

    tokenizer = F.load_tokenizer(source.folder)
    seqs = B.tokenize(tokenizer, [long_text(i) for i in range(batch * steps)], seq_len)
    student = F.random_model(F.Arch.parse(shape), source.family, seed=0)
    model = D.Distiller(student, teacher.config)
    spec = trainer.TrainSpec(max_steps=steps, lr=1e-3, seed=0, precision=precision)
    source_batches = B.TextBatches(seqs, batch, tokenizer.pad_token_id, teacher, 0, None)
    started = time.perf_counter()
    trainer.train(model, source_batches, spec, heldout=[], progress=False)
    return (time.perf_counter() - started) / steps


def measure(run: Any, rounds: int) -> dict[str, Any]:
    """Alternating rounds after one warm-up of each; median seconds per step and the ratio."""
    run("fp32"), run("bf16")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            times[precision].append(run(precision))
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {"fp32_step_s": round(fp32, 3), "bf16_step_s": round(bf16, 3), "speedup": round(fp32 / bf16, 2),
            "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    import torch

    from distillation.teacher_cache import load_teacher

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    machine = cpu_info()
    if devices.resolve_precision("auto", torch.device("cpu")) != "bf16":
        print(f"this CPU ({machine['model']}) has no native bf16 products: auto trains in fp32 here, nothing to "
              "compare", file=sys.stderr)
        return 2
    started, rows = time.time(), []
    for name, model, batch, seq_len in FINE_TUNES:
        source = F.resolve_source(model)
        log.info("%s: batch %d x %d", name, batch, seq_len)
        rows.append({"case": name, "source": source.name, "batch": batch, "seq_len": seq_len, "loop": "fine_tune",
                     **measure(lambda p, s=source, b=batch, n=seq_len: fine_tune_step_s(s, b, n, args.steps, p),
                               args.rounds)})
    name, model, shape, batch, seq_len = PRETRAIN
    source = F.resolve_source(model)
    teacher = load_teacher(source).eval()
    log.info("%s: batch %d x %d", name, batch, seq_len)
    rows.append({"case": name, "source": source.name, "batch": batch, "seq_len": seq_len, "loop": "pretrain",
                 **measure(lambda p: pretrain_step_s(source, shape, batch, seq_len, args.steps, p, teacher),
                           args.rounds)})
    result = {"rows": rows, "steps_per_round": args.steps, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "machine": machine, "versions": library_versions(),
              "elapsed_s": round(time.time() - started, 1)}
    out = Path(args.out)
    atomic_write_json(out / "train_precision.json", result)
    atomic_write_text(out / "train_precision.md", markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = ["# Training step time: fp32 against bf16 mixed precision", "",
             f"{m['model']}, {r['torch_threads']} torch threads, ISA {', '.join(m['isa'])}; torch "
             f"{r['versions'].get('torch', '?')}. Real weights (the student's in pretraining: random, "
             f"its time does not depend on them). Median seconds per optimiser step over {r['rounds']} "
             f"alternating rounds of {r['steps_per_round']} steps, after one warm-up round of each; every "
             "batch is full (batch x seq_len tokens). bf16: the forward under torch.autocast, weights, "
             "optimiser and losses fp32 (`bort/devices.py`).", "",
             "| case | loop | batch x seq | fp32 s/step | bf16 s/step | bf16 speedup |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['case']} | {x['loop']} | {x['batch']} x {x['seq_len']} | {x['fp32_step_s']:.3f} | "
                     f"{x['bf16_step_s']:.3f} | **{x['speedup']:.2f}x** |")
    lines += ["", f"Wall time {r['elapsed_s']:.0f} s. Reproduce: `.venv/bin/python bench/train_precision.py`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
