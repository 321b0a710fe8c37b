"""Batches for distillation: tokenised texts padded per batch, in a seeded order that is a pure
function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one would.

Each batch is a dict: ``input_ids`` and ``attention_mask`` (B, S) plus the teacher's targets
(``t.*``, see :func:`distillation.losses.teacher_targets`); with an MLM teacher also ``labels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distillation import losses as distill

Batch = dict[str, torch.Tensor]
HELDOUT_STEP = 1 << 40  # masking "step" of the i-th held-out batch is HELDOUT_STEP + i: never a training step


def tokenize(tokenizer: Any, texts: list[str], seq_len: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to `seq_len`; empty texts dropped."""
    ids = tokenizer([t for t in texts if t.strip()], truncation=True, max_length=seq_len,
                    add_special_tokens=True)["input_ids"]
    return [list(x) for x in ids]


def pad(seqs: list[list[int]], pad_id: int) -> Batch:
    """Right-pad to the longest sequence of the batch: ``input_ids``, ``attention_mask`` (B, S)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of `n` items for one epoch; depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator for one step's random choices (MLM masking), independent of history."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


class Masker:
    """BERT-style masking for an MLM teacher, seeded per step."""

    def __init__(self, tokenizer: Any, seed: int):
        self.special = list(tokenizer.all_special_ids)
        self.mask_id, self.vocab_size, self.seed = tokenizer.mask_token_id, len(tokenizer), seed

    def __call__(self, batch: Batch, step: int) -> Batch:
        ids, labels = distill.mask_tokens(batch["input_ids"], batch["attention_mask"], self.special,
                                          self.mask_id, self.vocab_size, step_generator(self.seed, step))
        return {**batch, "input_ids": ids, "labels": labels}


class TextBatches:
    """Batches of whole sentences, reshuffled every epoch; the teacher runs on the fly."""

    def __init__(self, seqs: list[list[int]], batch_size: int, pad_id: int, teacher: Any, seed: int,
                 masker: Masker | None = None):
        if not seqs:
            raise ValueError("no texts to distil on")
        self.seqs, self.batch_size, self.pad_id = seqs, min(batch_size, len(seqs)), pad_id
        self.teacher, self.seed, self.masker = teacher, seed, masker
        self.device = next(teacher.parameters()).device  # batches are made where the teacher runs
        self.per_epoch = len(seqs) // self.batch_size

    def batch_for(self, step: int) -> Batch:
        epoch, pos = divmod(step, self.per_epoch)
        order = epoch_order(self.seed, epoch, len(self.seqs))[pos * self.batch_size:(pos + 1) * self.batch_size]
        batch = pad([self.seqs[i] for i in order], self.pad_id)
        if self.masker is not None:
            batch = self.masker(batch, step)  # on the CPU: its generator is seeded per step there
        if self.device.type != "cpu":
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return {**batch, **distill.teacher_targets(self.teacher, batch)}


class ListBatches:
    """A fixed list of batches (e.g. from a teacher cache), visited in a seeded order per epoch.

    `complete` fills in what a stored batch lacks (an MLM teacher's logits are too large to store).
    """

    def __init__(self, batches: list[Batch], seed: int, complete: Callable[[Batch, int], Batch] | None = None):
        if not batches:
            raise ValueError("no batches")
        self.batches, self.seed, self.complete = batches, seed, complete

    def batch_for(self, step: int) -> Batch:
        epoch, pos = divmod(step, len(self.batches))
        batch = self.batches[int(epoch_order(self.seed, epoch, len(self.batches))[pos])]
        return self.complete(batch, step) if self.complete is not None else batch


def fixed_batches(seqs: list[list[int]], batch_size: int, pad_id: int) -> list[Batch]:
    """Consecutive batches in the given order (held-out sets, teacher caches)."""
    return [pad(seqs[i:i + batch_size], pad_id) for i in range(0, len(seqs), batch_size)]
