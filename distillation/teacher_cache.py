"""The teacher's outputs on a fixed set of tokenised corpus batches, computed once and stored.

The search trains tens of candidates on the same batches; recomputing the teacher for each would
double its cost. A cache is keyed by (source weights, corpus texts, seq_len, batch size, number of
batches, seed) and stored as one safetensors file (tensors + JSON metadata, no pickle).

Stored per batch: ``input_ids``, ``attention_mask`` and, for representation distillation, the
teacher's last hidden states ``t.hidden`` and the input of its last layer ``t.input`` (fp16). The
last layer's queries/keys/values are recomputed from ``t.input`` on access (three small matrix
products) instead of stored: that halves the file. An MLM teacher's vocabulary-sized logits are too
large to store, so in that mode the cache keeps the inputs and the teacher runs on access.
The source's activation importance (for inherited initialisation) is stored alongside.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bort import families as F
from bort.artifacts import sha256_file
from distillation import batches as B
from distillation import extract
from distillation import losses as distill

log = logging.getLogger(__name__)
FORMAT = 1


def load_teacher(source: F.Source) -> Any:
    """The source as a teacher: with its MLM head when its weights carry one, else the bare encoder."""
    from transformers import AutoModelForMaskedLM

    if F.has_mlm_weights(source.folder):
        return AutoModelForMaskedLM.from_pretrained(source.folder, use_safetensors=True).eval()
    return F.load_encoder(source.folder).eval()


def weights_digest(source: F.Source) -> str:
    """sha256 over the source's safetensors files (what the teacher's outputs depend on)."""
    h = hashlib.sha256()
    for path in sorted(source.folder.glob("*.safetensors")):
        h.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return h.hexdigest()


@torch.no_grad()
def _stored_targets(teacher: Any, batch: B.Batch) -> B.Batch:
    """Last hidden states and the last layer's input, fp16, for storage."""
    out = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return {"t.hidden": out.hidden_states[-1].half(), "t.input": out.hidden_states[-2].half()}


class TeacherCache:
    """Cached teacher batches for one source; see the module docstring."""

    def __init__(self, source: F.Source, train: list[B.Batch], heldout: list[B.Batch],
                 importance: extract.Importance, meta: dict[str, Any], teacher: Any = None):
        self.source, self.train, self.heldout = source, train, heldout
        self.importance, self.meta = importance, meta
        self._teacher, self._heldout_full, self._masker = teacher, None, None

    def teacher(self) -> Any:
        """The teacher model, loaded once per process."""
        if self._teacher is None:
            self._teacher = load_teacher(self.source)
        return self._teacher

    def channel_index(self, width: int) -> torch.Tensor:
        """The source hidden channels an inherited student of this width keeps (sorted)."""
        return extract.hidden_channels(self.importance, width)

    @torch.no_grad()
    def _complete(self, batch: B.Batch, step: int) -> B.Batch:
        teacher = self.teacher()
        if distill.has_mlm_head(teacher):
            if self._masker is None:
                self._masker = B.Masker(F.load_tokenizer(self.source.folder), self.meta["seed"])
            masked = self._masker(batch, step)
            return {**masked, **distill.teacher_targets(teacher, masked)}
        x = batch["t.input"].float()
        qkv = {f"t.{n}": lin(x) for n, lin in zip("qkv", distill.last_layer_linears(teacher), strict=True)}
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "t.hidden": batch["t.hidden"].float(), **qkv}

    def train_batches(self, seed: int) -> B.ListBatches:
        """The cached training batches in a seeded order (cycled when a run takes more steps)."""
        return B.ListBatches(self.train, seed, self._complete)

    def heldout_batches(self) -> list[B.Batch]:
        """The held-out batches with the teacher's targets (fixed masking for an MLM teacher)."""
        if self._heldout_full is None:
            self._heldout_full = [self._complete(b, B.HELDOUT_STEP + i) for i, b in enumerate(self.heldout)]
        return self._heldout_full

    @classmethod
    def build(cls, source: F.Source, train_texts: list[str], heldout_texts: list[str], *, seq_len: int,
              batch_size: int, n_batches: int, n_heldout_batches: int, seed: int,
              teacher: Any = None) -> TeacherCache:
        """Tokenise a seeded sample of the corpus, run the teacher once, measure importance."""
        teacher = teacher if teacher is not None else load_teacher(source)
        tokenizer = F.load_tokenizer(source.folder)
        order = np.random.default_rng(seed).permutation(len(train_texts))[:n_batches * batch_size]
        train_seqs = B.tokenize(tokenizer, [train_texts[i] for i in order], seq_len)
        held_seqs = B.tokenize(tokenizer, heldout_texts[:n_heldout_batches * batch_size], seq_len)
        pad_id = tokenizer.pad_token_id
        train = B.fixed_batches(train_seqs, batch_size, pad_id)
        heldout = B.fixed_batches(held_seqs, batch_size, pad_id)
        imp = extract.measure_importance(teacher, source.family, train[:4])
        if not distill.has_mlm_head(teacher):
            train = [{**b, **_stored_targets(teacher, b)} for b in train]
            heldout = [{**b, **_stored_targets(teacher, b)} for b in heldout]
        meta = {"format": FORMAT, "source": source.name, "seq_len": seq_len, "batch_size": batch_size,
                "seed": seed, "n_train": len(train), "n_heldout": len(heldout)}
        return cls(source, train, heldout, imp, meta, teacher)

    def save(self, path: str | Path) -> None:
        """One safetensors file: batches, importance, metadata (written atomically)."""
        tensors = {f"{split}.{i}.{k}": v.contiguous() for split, items in (("train", self.train),
                   ("heldout", self.heldout)) for i, b in enumerate(items) for k, v in b.items()}
        tensors.update(self.importance.to_tensors())
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(self.meta)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, source: F.Source) -> TeacherCache:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
        tensors = load_file(str(path))
        split = {name: [{} for _ in range(meta[f"n_{name}"])] for name in ("train", "heldout")}
        for key, value in tensors.items():
            name, rest = key.split(".", 1)
            if name in split:
                i, field = rest.split(".", 1)
                split[name][int(i)][field] = value
        return cls(source, split["train"], split["heldout"], extract.Importance.from_tensors(tensors), meta)

    @classmethod
    def load_or_build(cls, folder: str | Path, source: F.Source, train_texts: list[str],
                      heldout_texts: list[str], **params: Any) -> TeacherCache:
        """Reuse ``folder/teacher-<key>.safetensors`` when present; otherwise build and store it."""
        key_data = {"format": FORMAT, "weights": weights_digest(source), "params": params,
                    "texts": hashlib.sha256("\n".join(train_texts + ["\0"] + heldout_texts).encode()).hexdigest()}
        key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(folder) / f"teacher-{key}.safetensors"
        if path.is_file():
            log.info("teacher cache: reusing %s", path)
            return cls.load(path, source)
        cache = cls.build(source, train_texts, heldout_texts, **params)
        cache.save(path)
        log.info("teacher cache: %d train + %d held-out batches stored in %s", len(cache.train),
                 len(cache.heldout), path)
        return cache
