"""Classifier fine-tuning: length-bucketed batches, AdamW with warm-up and linear decay.

One loop serves the labeller, plain fine-tuning and every Agora run. Texts are tokenised once
without padding; batches gather texts of similar length (shuffled in pools, sorted inside a
pool) so a batch pads to its own longest text, not to ``seq_len``: on Rotten Tomatoes (median 27
tokens) that is about 2x fewer token positions than padding to 64. Every set a model is trained
on passes the test :class:`~agora.guard.Guard` first.

Where models run (``finetune.device``, set once per stage with :func:`set_device`, with
``finetune.precision``: bf16 autocast for training steps where it resolves to bf16): the CPU by
default on a machine without a GPU. On a GPU a model moves there for one fine-tune or one
prediction and back to the CPU afterwards, so everything between (copies, saving, the
embedding table G reads) sees a CPU model. GPU kernels are not bit-deterministic: a run there
reproduces its figures only to within noise.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agora.guard import Guard
from bort import devices, metrics

log = logging.getLogger(__name__)

POOL_BATCHES = 50  # a shuffled pool of this many batches is sorted by length, then cut into batches
_DEVICE = torch.device("cpu")
_PRECISION = "fp32"  # of training steps and fast predictions (bort.devices.resolve_precision)


def resolve_device(name: str) -> torch.device:
    """``finetune.device``'s torch device (:func:`bort.devices.resolve_device`)."""
    return devices.resolve_device(name, "finetune.device")


def set_device(name: str, precision: str = "fp32") -> torch.device:
    """Where fine-tunes and predictions run from now on, and at which precision ``finetune.precision``
    resolves to there (see the module's notes)."""
    global _DEVICE, _PRECISION
    device = resolve_device(name)
    _PRECISION = devices.resolve_precision(precision, device, "finetune.precision")
    _DEVICE = device
    return _DEVICE


def current_device() -> torch.device:
    return _DEVICE


def current_precision() -> str:
    return _PRECISION


def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(_DEVICE, non_blocking=True) for k, v in batch.items()} if _DEVICE.type != "cpu" else batch


@contextmanager
def on_device(model: Any) -> Iterator[Any]:
    """`model` on the current device for the block, back on the CPU after it (a no-op on the CPU)."""
    if _DEVICE.type == "cpu":
        yield model
        return
    model.to(_DEVICE)
    try:
        yield model
    finally:
        model.to("cpu")


@dataclass(frozen=True)
class TrainSpec:
    """How one fine-tune runs. `seed` fixes the head's initialisation and the batch order."""

    lr: float
    weight_decay: float
    warmup_ratio: float
    epochs: float
    batch_size: int
    seed: int
    grad_clip: float = 1.0
    freeze_word_embeddings: bool = True
    min_steps: int = 0  # at least this many optimiser steps, however few the examples (more epochs)


def planned_steps(spec: TrainSpec, n_batches: int) -> int:
    """Optimiser steps of a fine-tune whose epoch is `n_batches` batches: ``epochs`` of them, at
    least ``min_steps`` (a small training set gets more epochs, not a model that learned nothing)."""
    return max(1, round(spec.epochs * n_batches), spec.min_steps)


@dataclass
class Encoded:
    """Token ids per example (no padding), their lengths and labels."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer: Any, examples: Sequence[Any], seq_len: int) -> Encoded:
    """Tokenise examples (pairs as two segments), truncated to `seq_len`, unpadded; labels if they have any."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=seq_len, padding=False)
    types = enc.get("token_type_ids") if pairs is not None else None
    labels = np.array([getattr(e, "label", -1) for e in examples], dtype=np.int64)  # -1: unlabelled
    return Encoded(enc["input_ids"], types, labels)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches of similar length. With `rng`: shuffled pools, shuffled batch order; else sorted."""
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(data: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad the batch `idx` to its longest member: (batch, max_len) tensors."""
    width = max(len(data.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long) if data.token_type_ids is not None else None
    for row, i in enumerate(idx):
        n = len(data.input_ids[i])
        ids[row, :n] = torch.tensor(data.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence Transformers' load-time notices ("newly initialized: classifier.*", "pooler not used"):
    expected whenever a bare encoder becomes a classifier, or a classifier's encoder is reused."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def new_classifier(folder: str | Path, labels: list[str], seed: int) -> Any:
    """A sequence classifier on the encoder in `folder`; the head (and a missing pooler) seeded."""
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_pretrained(
            Path(folder), num_labels=len(labels), use_safetensors=True,
            id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})


def load_classifier(folder: str | Path) -> Any:
    """A saved classifier folder (safetensors only)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(Path(folder), use_safetensors=True).eval()


def save_classifier(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Save model + tokenizer in Hugging Face layout, atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    old = folder.parent / f".{folder.name}.old{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class SoftTargets:
    """Distillation targets for :func:`fine_tune`: the teacher's class probabilities per example.

    ``loss = alpha · CE(gold) + (1 - alpha) · T² · KL(teacher_T ‖ student_T)``, the gold term only on
    examples that have a gold label (label >= 0; G's new points have none), ``teacher_T`` the
    teacher's probabilities re-tempered by ``temperature``.
    """

    probs: np.ndarray  # (n_examples, n_labels)
    temperature: float = 1.0
    alpha: float = 0.0


@dataclass(frozen=True)
class Resume:
    """Where a long fine-tune checkpoints (every ``every_s`` seconds of training) and under which key:
    a checkpoint of another configuration is never resumed."""

    folder: Path
    key: str
    every_s: float = 300.0


def fine_tune(model: Any, tokenizer: Any, examples: Sequence[Any], spec: TrainSpec, seq_len: int,
              guard: Guard, desc: str = "fine-tune", soft: SoftTargets | None = None,
              resume: Resume | None = None) -> dict[str, float]:
    """Train `model` in place on `examples` (which must hold no test text).

    With `soft`, the loss distils the teacher's probabilities (see :class:`SoftTargets`). With
    `resume`, a killed run continues from its last checkpoint to the same weights an uninterrupted
    one reaches (the batch plan is a function of the seed; optimiser, schedule and dropout RNG
    are restored).

    Returns:
        ``{"steps", "seconds", "loss"}`` (loss: mean of the last 50 steps).

    Raises:
        TestLeakError: an example is a test-split text.
    """
    guard.check(examples, desc)
    data = encode(tokenizer, examples, seq_len)
    rng = np.random.default_rng(spec.seed)
    first_epoch = length_batches(data.lengths, spec.batch_size, rng)
    total = planned_steps(spec, len(first_epoch))
    plan = [first_epoch] + [length_batches(data.lengths, spec.batch_size, rng)
                            for _ in range(math.ceil(total / len(first_epoch)) - 1)]
    steps = [b for epoch in plan for b in epoch][:total]
    model.get_input_embeddings().weight.requires_grad_(not spec.freeze_word_embeddings)
    labels = torch.from_numpy(data.labels)
    targets = None if soft is None else torch.from_numpy(np.asarray(soft.probs, dtype=np.float32))
    step_losses: list[torch.Tensor] = []  # kept on the device: no sync per step
    started = time.time()
    model.train()
    with torch.random.fork_rng(devices=[]), on_device(model):
        optimizer, scheduler = _optimizer(model, spec, len(steps))  # its state lives where the model does
        torch.manual_seed(spec.seed)  # dropout masks
        first = _resume(resume, model, optimizer, scheduler)
        last_save = time.time()
        for step in tqdm(range(first, len(steps)), desc=desc, unit="step", leave=False, mininterval=2.0,
                         initial=first, total=len(steps)):
            idx = steps[step]
            with devices.autocast(_DEVICE, _PRECISION):
                logits = model(**to_device(collate(data, idx, tokenizer.pad_token_id))).logits
            loss = _loss(logits, labels[idx].to(_DEVICE), None if targets is None else targets[idx].to(_DEVICE), soft)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_losses.append(loss.detach())
            if resume is not None and time.time() - last_save > resume.every_s and step + 1 < len(steps):
                _save(resume, model, optimizer, step + 1)
                last_save = time.time()
        losses = torch.stack(step_losses).cpu().tolist() if step_losses else [float("nan")]
        del optimizer, scheduler
    model.eval()
    model.get_input_embeddings().weight.requires_grad_(True)
    if resume is not None:
        shutil.rmtree(resume.folder, ignore_errors=True)  # finished: the caller saves the model
    seconds = time.time() - started
    log.info("%s: %d steps on %d examples in %.0f s, loss %.3f", desc, len(steps), len(examples), seconds,
             float(np.mean(losses[-50:])))
    return {"steps": len(steps), "seconds": round(seconds, 1), "loss": round(float(np.mean(losses[-50:])), 4)}


def _loss(logits: torch.Tensor, gold: torch.Tensor, teacher: torch.Tensor | None,
          soft: SoftTargets | None) -> torch.Tensor:
    """Cross-entropy on gold labels, or the distillation loss of :class:`SoftTargets`."""
    if teacher is None or soft is None:
        return torch.nn.functional.cross_entropy(logits.float(), gold)
    t = soft.temperature
    teacher_t = torch.softmax(torch.log(teacher.clamp_min(1e-12)) / t, dim=-1)  # re-temper the probabilities
    kd = torch.nn.functional.kl_div(torch.log_softmax(logits.float() / t, dim=-1), teacher_t,
                                    reduction="batchmean") * t * t
    if soft.alpha <= 0:
        return kd
    has_gold = gold >= 0
    ce = (torch.nn.functional.cross_entropy(logits.float()[has_gold], gold[has_gold]) if has_gold.any()
          else logits.sum() * 0.0)
    return soft.alpha * ce + (1.0 - soft.alpha) * kd


def _resume(resume: Resume | None, model: Any, optimizer: Any, scheduler: Any) -> int:
    """The step to start from: 0, or the step of this configuration's last checkpoint (restored)."""
    from distillation import checkpoint as C

    if resume is None:
        return 0
    latest = C.latest_checkpoint(resume.folder, resume.key)
    if latest is None:
        return 0
    step = int(C.load_checkpoint(latest, model, optimizer)["step"])
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose, to fast-forward
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):  # the schedule is a pure function of the step
            scheduler.step()
    log.info("resuming fine-tuning from checkpoint step %d (%s)", step, latest)
    return step


def _save(resume: Resume, model: Any, optimizer: Any, step: int) -> None:
    from distillation import checkpoint as C

    C.save_checkpoint(resume.folder, step, model, optimizer, {"step": step, "key": resume.key})


def _optimizer(model: Any, spec: TrainSpec, total_steps: int) -> tuple[Any, Any]:
    """AdamW (no decay on biases and LayerNorms), linear warm-up then linear decay to 0."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=spec.lr)
    warmup = int(spec.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def predict(model: Any, tokenizer: Any, examples: Sequence[Any], seq_len: int,
            batch_size: int = 128, fast: bool = False) -> np.ndarray:
    """Class probabilities (n, n_labels), in the order of `examples`.

    `fast`: at the training precision (bf16 where ``finetune.precision`` resolved to it), for labels
    and soft targets; scores (:func:`evaluate`) are always computed in fp32.
    """
    if not examples:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    data = encode(tokenizer, examples, seq_len)
    out = np.zeros((len(examples), model.config.num_labels), dtype=np.float32)
    model.eval()
    with torch.inference_mode(), on_device(model):
        for idx in length_batches(data.lengths, batch_size, rng=None):
            with devices.autocast(_DEVICE, _PRECISION if fast else "fp32"):
                logits = model(**to_device(collate(data, idx, tokenizer.pad_token_id))).logits
            out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return out


def evaluate(model: Any, tokenizer: Any, examples: Sequence[Any], seq_len: int, batch_size: int = 128,
             guard: Guard | None = None, where: str = "dev") -> dict[str, Any]:
    """Scores on `examples`, plus the predictions. With a `guard`, the set is checked first (selection).

    Returns:
        every metric of :data:`bort.metrics.METRICS`, ``"mistakes"`` and ``"pred"`` (np.ndarray).
    """
    if guard is not None:
        guard.check(examples, f"model selection on {where}")
    probs = predict(model, tokenizer, examples, seq_len, batch_size)
    pred = probs.argmax(axis=1)
    gold = np.array([e.label for e in examples], dtype=np.int64)
    return {**metrics.scores(gold, pred, model.config.num_labels), "mistakes": int(np.sum(pred != gold)), "pred": pred}
