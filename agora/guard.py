"""The test-split guard: no test text, nor a near copy of one, reaches training or selection.

Agora trains on points derived from the dev set and picks models on it, so the only honest
number is accuracy on a split it never saw. This is enforced in code, not by convention: a
:class:`Guard` is built from the test examples (hashes of their normalised text; optionally their
sentence embeddings), and

- every set a model is trained on or selected on goes through :meth:`Guard.check`, which raises
  :class:`TestLeakError` on contact (the training loop calls it itself);
- the task's train and dev splits go through :meth:`Guard.filter` once, which drops any example
  whose text equals a test text (``bort.data`` already keeps identical texts in one split, so this
  normally drops nothing; it is the second lock on the door);
- G's inputs and outputs go through :meth:`Guard.filter` and :meth:`Guard.near_copies`: a dev
  mistake that is a test text is never perturbed, and a new point that equals, or embeds as a near
  copy of, a test text is dropped.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bort.errors import BortError

log = logging.getLogger(__name__)

_NON_WORD = re.compile(r"[\W_]+")


class TestLeakError(BortError):
    """A test-split text reached a set used for training or model selection."""

    __test__ = False  # not a pytest class


def text_key(text: str, text_pair: str | None = None) -> str:
    """sha256 of the text with case, punctuation and spacing removed (the pair joined in)."""
    norm = _NON_WORD.sub(" ", text.casefold()).strip()
    if text_pair is not None:
        norm += "\x1f" + _NON_WORD.sub(" ", text_pair.casefold()).strip()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def example_key(example: Any) -> str:
    """:func:`text_key` of an example with ``text`` and ``text_pair`` attributes."""
    return text_key(example.text, getattr(example, "text_pair", None))


class Guard:
    """Hashes (and optionally embeddings) of the test split; every gate of the pipeline asks it."""

    def __init__(self, test_examples: Sequence[Any]) -> None:
        self._keys = frozenset(example_key(e) for e in test_examples)
        self._texts = [e.text if getattr(e, "text_pair", None) is None else e.text_pair
                       for e in test_examples]
        self._embeddings: np.ndarray | None = None
        self.near_copy_cosine = 1.0
        self.dropped: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def contains(self, example: Any) -> bool:
        """True when the example's normalised text is a test text."""
        return example_key(example) in self._keys

    def check(self, examples: Sequence[Any], where: str) -> Sequence[Any]:
        """Return `examples` unchanged, or raise when any of them is a test text.

        Raises:
            TestLeakError: naming `where` and how many examples were test texts.
        """
        hits = [e for e in examples if example_key(e) in self._keys]
        if hits:
            raise TestLeakError(
                f"{len(hits)} test-split text(s) reached {where} (first: {hits[0].text[:60]!r}); "
                "the test split must never be trained or selected on. This is a bug in the caller, "
                "or a task whose splits were edited by hand: rerun `bort data --prepare`"
            )
        return examples

    def filter(self, examples: Sequence[Any], where: str) -> list[Any]:
        """`examples` without those that are test texts; the count dropped is logged and kept."""
        kept = [e for e in examples if example_key(e) not in self._keys]
        if len(kept) < len(examples):
            dropped = len(examples) - len(kept)
            self.dropped[where] = self.dropped.get(where, 0) + dropped
            log.warning("guard: dropped %d %s example(s) equal to a test text", dropped, where)
        return kept

    def attach_embeddings(self, embed: Callable[[list[str]], np.ndarray], near_copy_cosine: float) -> None:
        """Embed the test texts (the perturbed side, for pairs) so near copies can be caught too."""
        self._embeddings = embed(self._texts) if self._texts else None
        self.near_copy_cosine = near_copy_cosine

    def near_copies(self, embeddings: np.ndarray) -> np.ndarray:
        """Boolean mask over rows of normalised `embeddings` (n, H): cosine to a test text >= threshold."""
        if self._embeddings is None or len(embeddings) == 0:
            return np.zeros(len(embeddings), dtype=bool)
        cosine = embeddings @ self._embeddings.T  # (n, n_test)
        return cosine.max(axis=1) >= self.near_copy_cosine
