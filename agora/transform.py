"""G, Agora's transformation function for text: new points near a mistake, not copies of it.

For each dev mistake G makes ``candidates`` perturbed texts, each with about ``edit_rate`` of its
words edited by one of:

- **substitute**: a word becomes one of its nearest neighbours (cosine) in the labeller's
  input-embedding matrix, searched over whole-word vocabulary entries only (no special tokens,
  ``##`` word pieces, ``[unused]`` slots, digits or non-ASCII fragments);
- **drop** a word, or **swap** two adjacent words;
- **infill**: mask a word and take one of a masked-LM's top predictions, only when an MLM head
  exists (none of the encoders installable here has one: the path is guarded, and tested on a
  tiny random MLM).

A candidate is kept when the cosine between its sentence embedding and the original's lies
inside ``band`` (inclusive): above the low end it is still about the same thing, below the
high end it is not a copy. The first ``k`` kept candidates, in the order they were made, are G's
output. Everything random comes from the ``numpy.random.Generator`` passed in, so G is
deterministic for a seed. For text pairs only the second segment (the hypothesis) is edited.
Edits stay within the first ``max_words`` words: the classifier never sees text past ``seq_len``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agora.guard import Guard, text_key

log = logging.getLogger(__name__)

# A word (hyphens and apostrophes inside it) or one other mark, each with the spaces after it.
_TOKEN = re.compile(r"(\w+(?:[-'’]\w+)*|[^\w\s])(\s*)")
OPS = ("substitute", "drop", "swap", "infill")
OP_WEIGHTS = {False: (0.6, 0.2, 0.2, 0.0), True: (0.4, 0.15, 0.15, 0.3)}  # by "an MLM head exists"


def split_words(text: str) -> list[str]:
    """Words and marks in order, each carrying the whitespace that followed it."""
    return ["".join(m.groups()) for m in _TOKEN.finditer(text.strip())]


def join_words(words: Sequence[str]) -> str:
    """Inverse of :func:`split_words` (exact when nothing was edited)."""
    return "".join(words).strip()


def _core(token: str) -> str:
    return token.rstrip()


def _with_core(token: str, core: str) -> str:
    """`core` with `token`'s trailing whitespace."""
    return core + token[len(token.rstrip()):]


def _is_word(token: str) -> bool:
    return len(token) >= 2 and token.isascii() and token.isalpha() or token in ("a", "i")


class Neighbours:
    """Nearest whole-word neighbours by cosine in an input-embedding matrix (vocab, H)."""

    def __init__(self, tokenizer: Any, weight: np.ndarray, n: int) -> None:
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_tokens)
        marker = next((m for m in ("Ġ", "▁") if any(t.startswith(m) for t in list(vocab)[:5000])), None)
        words: dict[str, int] = {}
        for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
            if token in special or token.startswith("##"):
                continue
            if marker is not None:  # byte-level / sentencepiece: only word-initial pieces are words
                if not token.startswith(marker):
                    continue
                token = token[len(marker):]
            if _is_word(token) and idx < len(weight):
                words.setdefault(token, idx)
        self.words = list(words)
        self._row = {w: i for i, w in enumerate(self.words)}
        matrix = np.asarray(weight, dtype=np.float32)[list(words.values())]  # (W, H)
        self._matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)
        self.n = n
        self._cache: dict[str, list[str]] = {}

    def __contains__(self, word: str) -> bool:
        return word.lower() in self._row

    def of(self, word: str) -> list[str]:
        """The `n` nearest other words (lower case), nearest first; [] for an unknown word."""
        key = word.lower()
        if key not in self._row:
            return []
        if key not in self._cache:
            cosine = self._matrix @ self._matrix[self._row[key]]  # (W,)
            cosine[self._row[key]] = -np.inf
            top = np.argpartition(-cosine, self.n)[:self.n]
            self._cache[key] = [self.words[i] for i in top[np.argsort(-cosine[top], kind="stable")]]
        return self._cache[key]


def has_mlm_head(folder: str | Path) -> bool:
    """True when the checkpoint's weights carry a masked-LM head (G can infill with it); see
    :func:`bort.families.has_mlm_weights` for why the config's architecture name is not enough."""
    from bort.families import has_mlm_weights

    return has_mlm_weights(folder)


@dataclass(frozen=True)
class GSettings:
    """G's knobs (from ``cfg.finetune``)."""

    k: int
    candidates: int
    band: tuple[float, float]
    edit_rate: float
    max_words: int = 64


@dataclass(frozen=True)
class NewPoint:
    """A new unlabelled point; `origin` indexes G's input list, `similarity` is the band's cosine."""

    text: str
    text_pair: str | None
    origin: int
    similarity: float


@dataclass
class GStats:
    """What G did in one call (the round log's points columns)."""

    inputs: int = 0
    refused_inputs: int = 0
    candidates: int = 0
    in_band: int = 0
    guard_dropped: int = 0
    made: int = 0
    similarities: list[float] = field(default_factory=list)


class TextTransform:
    """G: ``examples -> new points`` (k per example at most), see the module docstring."""

    def __init__(self, neighbours: Neighbours, embed: Callable[[list[str]], np.ndarray], settings: GSettings,
                 guard: Guard, mlm: tuple[Any, Any] | None = None) -> None:
        self.neighbours, self.embed, self.settings, self.guard, self.mlm = neighbours, embed, settings, guard, mlm
        self._weights = np.array(OP_WEIGHTS[mlm is not None])

    def __call__(self, examples: Sequence[Any], rng: np.random.Generator) -> tuple[list[NewPoint], GStats]:
        """New points from `examples` (dev mistakes). Test texts among them are refused, not used."""
        stats = GStats(inputs=len(examples))
        per_example: list[tuple[int, str, list[str]]] = []
        for i, ex in enumerate(examples):
            if self.guard.contains(ex):
                stats.refused_inputs += 1
                continue
            side = ex.text_pair if ex.text_pair is not None else ex.text
            per_example.append((i, side, self._candidates(side, rng)))
        stats.candidates = sum(len(c) for _, _, c in per_example)
        flat = [side for _, side, _ in per_example] + [c for _, _, cands in per_example for c in cands]
        vectors = self.embed(flat) if flat else np.zeros((0, 1), dtype=np.float32)
        originals, cand_vectors = vectors[:len(per_example)], vectors[len(per_example):]
        near_test = self.guard.near_copies(cand_vectors)
        low, high = self.settings.band
        points, offset = [], 0
        for row, (i, _, cands) in enumerate(per_example):
            sims = cand_vectors[offset:offset + len(cands)] @ originals[row]
            taken = 0
            for j, (text, sim) in enumerate(zip(cands, sims, strict=True)):
                if taken == self.settings.k or not low <= sim <= high:
                    continue
                stats.in_band += 1
                point = self._point(examples[i], text, i, float(sim))
                if near_test[offset + j] or self.guard.contains(point):
                    stats.guard_dropped += 1
                    continue
                points.append(point)
                stats.similarities.append(float(sim))
                taken += 1
            offset += len(cands)
        stats.made = len(points)
        return points, stats

    @staticmethod
    def _point(example: Any, new_side: str, origin: int, sim: float) -> NewPoint:
        if example.text_pair is not None:
            return NewPoint(example.text, new_side, origin, sim)
        return NewPoint(new_side, None, origin, sim)

    def _candidates(self, text: str, rng: np.random.Generator) -> list[str]:
        """Up to ``settings.candidates`` distinct perturbations of `text`, none equal to it."""
        words = split_words(text)
        original = text_key(text)
        seen, out = {original}, []
        for _ in range(self.settings.candidates):
            new = join_words(self.perturb(words, rng))
            key = text_key(new)
            if key not in seen:
                seen.add(key)
                out.append(new)
        return out

    def perturb(self, words: Sequence[str], rng: np.random.Generator) -> list[str]:
        """One candidate: about ``edit_rate`` of the editable words edited (at least one edit)."""
        words = list(words)
        n_edits = max(1, round(self.settings.edit_rate * len(self._editable(words))))
        for _ in range(n_edits):
            op = OPS[rng.choice(len(OPS), p=self._weights)]
            words = getattr(self, f"_{op}")(words, rng)
        return words

    def _editable(self, words: Sequence[str]) -> list[int]:
        return [i for i, w in enumerate(words[:self.settings.max_words]) if w[0].isalnum()]

    def _substitute(self, words: list[str], rng: np.random.Generator) -> list[str]:
        options = [i for i in self._editable(words) if _core(words[i]) in self.neighbours]
        if not options:
            return self._swap(words, rng)
        i = options[rng.integers(len(options))]
        near = self.neighbours.of(_core(words[i]))
        new = near[rng.integers(len(near))]
        words[i] = _with_core(words[i], new.capitalize() if words[i][0].isupper() else new)
        return words

    def _drop(self, words: list[str], rng: np.random.Generator) -> list[str]:
        options = self._editable(words)
        if len(options) < 4:  # a short text loses its meaning with a word: swap instead
            return self._swap(words, rng) if len(options) >= 2 else words
        del words[options[rng.integers(len(options))]]
        return words

    def _swap(self, words: list[str], rng: np.random.Generator) -> list[str]:
        editable = set(self._editable(words))
        pairs = [i for i in sorted(editable) if i + 1 in editable]
        if pairs:
            i = pairs[rng.integers(len(pairs))]
            first, second = _core(words[i]), _core(words[i + 1])
            words[i], words[i + 1] = _with_core(words[i], second), _with_core(words[i + 1], first)
        return words

    def _infill(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """Mask one word and sample among the masked LM's top whole-word predictions."""
        import torch

        model, tokenizer = self.mlm
        options = self._editable(words)
        if not options:
            return words
        i = options[rng.integers(len(options))]
        masked = join_words([*words[:i], _with_core(words[i], tokenizer.mask_token), *words[i + 1:]])
        enc = tokenizer(masked, return_tensors="pt", truncation=True, max_length=4 * self.settings.max_words)
        where = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()
        if len(where) == 0:  # the mask fell past the truncation
            return words
        with torch.inference_mode():
            logits = model(**enc).logits[0, where[0, 0]]  # (vocab,)
        top = torch.topk(logits, k=min(50, logits.numel())).indices.tolist()
        choices = [w for w in (tokenizer.convert_ids_to_tokens(t).lstrip("Ġ▁") for t in top)
                   if _is_word(w) and w.lower() != _core(words[i]).lower()][:self.neighbours.n]
        if choices:
            words[i] = _with_core(words[i], choices[rng.integers(len(choices))])
        return words


def sentence_embedder(encoder: Any, tokenizer: Any, seq_len: int,
                      batch_size: int = 128) -> Callable[[list[str]], np.ndarray]:
    """``texts -> (n, H)`` normalised mean-pooled embeddings, batched by length, no gradients.

    The encoder runs at the training precision (``finetune.precision``: bf16 where it resolved to it;
    on BBC News G embeds ~9,000 texts at 256 tokens with an MPNet labeller), the pooling in fp32.
    """
    import torch

    from agora.train import collate, current_device, current_precision, length_batches, on_device, to_device
    from bort.devices import autocast
    from bort.families import mean_pool

    def embed(texts: list[str]) -> np.ndarray:
        ids = tokenizer(texts, truncation=True, max_length=seq_len, padding=False)["input_ids"]
        data = _Ids(ids)
        out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
        batches = length_batches(np.array([len(x) for x in ids]), batch_size, rng=None)
        with torch.inference_mode(), on_device(encoder):  # a bar where it takes minutes (a base-size labeller)
            for idx in tqdm(batches, desc="G: sentence embeddings", unit="batch", leave=False, mininterval=2.0,
                            disable=len(texts) < 2000):
                batch = to_device(collate(data, idx, tokenizer.pad_token_id))
                with autocast(current_device(), current_precision()):
                    hidden = encoder(**batch).last_hidden_state  # (batch, len, H)
                out[idx] = mean_pool(hidden.float(), batch["attention_mask"]).cpu().numpy()
        return out

    return embed


@dataclass
class _Ids:
    """The shape :func:`agora.train.collate` reads: token ids only."""

    input_ids: list[list[int]]
    token_type_ids: None = None
