"""`bort pretrain`: extract the chosen shape from the source and distil it on the unlabelled corpus.

Reads the shape from the optimize stage's ``chosen.json`` (or ``pretrain.layers/heads/hidden/
intermediate`` set by hand), builds the student (:mod:`optimize.extract`), trains it with the loop
the search also uses (:mod:`optimize.trainer`, losses in :mod:`optimize.distill`), and writes
``runs/<run>/pretrain/``: ``model/`` (Hugging Face layout, safetensors, tokenizer), ``loss.csv``,
``loss.png`` and the manifest. Checkpoints go to ``pretrain/checkpoints/``; rerunning after a
kill continues from the last one (they are deleted once the manifest is written).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bort import families as F
from bort.artifacts import (
    atomic_write_bytes,
    atomic_write_text,
    is_up_to_date,
    read_manifest,
    stage_dir,
    stage_fingerprint,
    write_manifest,
)
from bort.config import RunConfig
from bort.corpus import corpus_texts
from bort.devices import resolve_device, resolve_precision
from bort.errors import ArtifactError
from distillation import batches as B
from distillation import extract, trainer
from distillation import losses as distill
from distillation.teacher_cache import load_teacher

log = logging.getLogger(__name__)
STAGE = "pretrain"


@dataclasses.dataclass
class Outcome:
    """What one distillation run produced."""

    distiller: distill.Distiller
    tokenizer: Any
    result: trainer.TrainResult
    layers: list[int]
    embedding_cosine: float
    initial_cosine: float  # before training: what the initialisation alone gives
    mode: str  # representation | mlm
    device: str = "cpu"
    precision: str = "fp32"  # what pretrain.precision resolved to on that device


def run(cfg: RunConfig, run_dir: str | Path, args: Any = None) -> Any:
    """The stage: shape -> corpus -> student -> distillation -> model folder, curve, manifest."""
    from bort import data

    started, run_dir = time.time(), Path(run_dir)
    arch, upstream = target_arch(cfg, run_dir)
    task = data.load_prepared(run_dir)
    upstream["data"] = read_manifest(run_dir, "data").fingerprint
    fingerprint = stage_fingerprint(cfg, STAGE, upstream=upstream)
    if is_up_to_date(run_dir, STAGE, fingerprint):
        log.info("pretrain: up to date in %s", stage_dir(run_dir, STAGE))
        return read_manifest(run_dir, STAGE)
    folder = stage_dir(run_dir, STAGE)
    (folder / "manifest.json").unlink(missing_ok=True)  # a half-rewritten folder must not look current
    source = F.resolve_source(cfg.source.model)
    train_texts, heldout_texts = corpus_texts(cfg, task)
    outcome = distil(cfg, source, arch, train_texts, heldout_texts, folder / "checkpoints", key=fingerprint)
    save_model(outcome, source, folder / "model")
    write_curve(outcome.result.history, folder)
    metrics = summary(cfg, source, arch, outcome)
    manifest = write_manifest(run_dir, STAGE, cfg, fingerprint=fingerprint, metrics=metrics,
                              inputs=upstream, started=started)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # done: only a finished stage reads them
    if metrics["stopped_by"] == "time":
        log.warning("pretrain: the %g s time limit stopped training at step %d of %d, so this student depends "
                    "on the machine's speed; for the configured one raise pretrain.time_budget_s (0: no limit)",
                    cfg.pretrain.time_budget_s, metrics["steps"], cfg.pretrain.max_steps)
    print(f"pretrain: {arch.label()} ({cfg.pretrain.init}) {metrics['steps']} steps in {metrics['seconds']:.0f} s, "
          f"held-out loss {metrics['heldout_loss']:.4f}, embedding cosine {metrics['embedding_cosine']:.4f}")
    return manifest


def target_arch(cfg: RunConfig, run_dir: Path) -> tuple[F.Arch, dict[str, str]]:
    """The shape set by hand (all four pretrain sizes), else the one `bort optimize` chose."""
    p = cfg.pretrain
    if p.layers > 0:
        return F.Arch(p.layers, p.heads, p.hidden, p.intermediate), {}
    manifest = read_manifest(run_dir, "optimize")
    chosen_path = manifest.dir / "chosen.json"
    if not chosen_path.is_file():
        raise ArtifactError(
            f"the optimize stage in {run_dir} chose no architecture ({chosen_path} is missing); relax its "
            "policy and rerun `bort optimize`, or set the shape by hand with --set pretrain.layers=... "
            "pretrain.heads=... pretrain.hidden=... pretrain.intermediate=..."
        )
    chosen = json.loads(chosen_path.read_text(encoding="utf-8"))
    return F.Arch(**chosen["arch"]), {"optimize": manifest.fingerprint}


def distil(cfg: RunConfig, source: F.Source, arch: F.Arch, train_texts: list[str], heldout_texts: list[str],
           checkpoints: Path | None, key: str = "", progress: bool = True) -> Outcome:
    """Build the student at `arch` per ``cfg.pretrain`` and distil it from `source`; resumable."""
    p = cfg.pretrain
    teacher, tokenizer = load_teacher(source), F.load_tokenizer(source.folder)
    seqs = B.tokenize(tokenizer, train_texts, p.seq_len)
    held_texts = [t for t in heldout_texts if t.strip()][:p.heldout_texts]
    imp, channels = None, None
    if p.init == "inherit":
        sample = np.random.default_rng(cfg.seed).permutation(len(seqs))[:p.importance_batches * p.batch_size]
        imp = extract.measure_importance(teacher, source.family,
                                         B.fixed_batches([seqs[i] for i in sample], p.batch_size, tokenizer.pad_token_id))
        channels = extract.hidden_channels(imp, arch.hidden)
    student, layers = extract.build_student(source, teacher, arch, p.init, imp, cfg.seed, p.layer_selection)
    model = distill.Distiller(student, teacher.config, channel_index=channels, seed=cfg.seed)
    device = resolve_device(p.device, "pretrain.device")  # importance and extraction ran on the CPU
    teacher, model = teacher.to(device), model.to(device)
    precision = resolve_precision(p.precision, device, "pretrain.precision")
    log.info("pretrain runs on %s in %s", device, precision)
    masker = B.Masker(tokenizer, cfg.seed) if distill.has_mlm_head(teacher) else None
    train_batches = B.TextBatches(seqs, p.batch_size, tokenizer.pad_token_id, teacher, cfg.seed, masker)
    heldout = heldout_batches(teacher, tokenizer, held_texts, p, masker)
    spec = trainer.TrainSpec(max_steps=p.max_steps, lr=p.lr, weight_decay=p.weight_decay,
                             warmup_ratio=p.warmup_ratio, grad_clip=p.grad_clip, weight_clip=p.weight_clip,
                             time_budget_s=p.time_budget_s, checkpoint_every=p.checkpoint_every,
                             eval_every=p.eval_every, seed=cfg.seed, precision=precision)
    initial = distill.embedding_cosine(model, teacher, tokenizer, held_texts, p.seq_len)
    result = trainer.train(model, train_batches, spec, heldout, folder=checkpoints, key=key, progress=progress)
    cosine = distill.embedding_cosine(model, teacher, tokenizer, held_texts, p.seq_len)
    model = model.to("cpu")  # saved and handed on from the CPU
    return Outcome(model, tokenizer, result, layers, cosine, initial, "mlm" if masker else "representation",
                   str(device), precision)


def heldout_batches(teacher: Any, tokenizer: Any, texts: list[str], p: Any, masker: B.Masker | None) -> list[B.Batch]:
    """Fixed held-out batches with the teacher's targets (fixed masking for an MLM teacher)."""
    out = []
    for i, batch in enumerate(B.fixed_batches(B.tokenize(tokenizer, texts, p.seq_len), p.batch_size,
                                              tokenizer.pad_token_id)):
        if masker is not None:
            batch = masker(batch, B.HELDOUT_STEP + i)
        batch = trainer.on_model_device(batch, teacher)
        out.append({**batch, **distill.teacher_targets(teacher, batch)})
    return out


def save_model(outcome: Outcome, source: F.Source, target: Path) -> None:
    """The student in Hugging Face layout (safetensors + config + tokenizer), replaced atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student = outcome.distiller.student.eval()
    student.save_pretrained(tmp, safe_serialization=True)
    outcome.tokenizer.save_pretrained(tmp)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def write_curve(history: list[dict[str, Any]], folder: Path) -> None:
    """loss.csv (one row per step) and loss.png (training loss and held-out points)."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    cols = ["step", "loss", "heldout_loss", "lr", "tokens", "elapsed_s"]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]:.6g}" for c in cols) for r in history]
    atomic_write_text(folder / "loss.csv", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=0.8, label="training batch")
    held = [(r["step"], r["heldout_loss"]) for r in history if r.get("heldout_loss") is not None]
    if held:
        ax.plot(*zip(*held, strict=True), "o-", label="held-out")
    ax.set(xlabel="step", ylabel="distillation loss", yscale="log", title="Distillation pretraining")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(folder / "loss.png", buf.getvalue())


def summary(cfg: RunConfig, source: F.Source, arch: F.Arch, outcome: Outcome) -> dict[str, Any]:
    """The manifest's metrics."""
    r = outcome.result
    params = F.count_params(arch, source.family, F.Vocab.from_config(source.config),
                            pooler=getattr(outcome.distiller.student.base_model, "pooler", None) is not None)
    return {"heldout_loss": round(r.heldout_loss, 6), "embedding_cosine": round(outcome.embedding_cosine, 6),
            "embedding_cosine_at_init": round(outcome.initial_cosine, 6),
            "steps": r.steps, "tokens": r.tokens, "seconds": round(r.seconds, 2),
            "tokens_per_s": round(r.tokens / max(r.seconds, 1e-9), 1), "stopped_by": r.stopped_by,
            "init": cfg.pretrain.init, "arch": arch.to_dict(), "shape": arch.label(), "params": params,
            "source": source.name, "source_arch": source.arch.label(), "source_layers": outcome.layers,
            "loss": outcome.mode, "torch_threads": torch.get_num_threads(), "device": outcome.device,
            "precision": outcome.precision}
