"""Shared helpers of the agora tests: a tiny sentiment-like task and a keyword labeller."""

from __future__ import annotations

import numpy as np

from bort.task import Example, TaskData

GOOD = ("good", "great", "excellent", "lovely", "wonderful", "brilliant")
BAD = ("bad", "awful", "poor", "terrible", "boring", "dull")
FILLER = ("the", "movie", "was", "really", "quite", "plot", "actors", "story", "and", "film", "this", "very")


def sentence(rng: np.random.Generator, label: int) -> str:
    """Six to ten filler words with one or two words of the label's sentiment."""
    words = list(rng.choice(FILLER, size=int(rng.integers(6, 11))))
    for _ in range(int(rng.integers(1, 3))):
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(GOOD if label else BAD)))
    return " ".join(words).capitalize() + "."


def tiny_task(seed: int = 0, n_train: int = 120, n_eval: int = 40) -> TaskData:
    """A two-label task whose texts are all distinct."""
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    splits = []
    for n in (n_train, n_eval, n_eval):
        rows = []
        while len(rows) < n:
            label = len(rows) % 2
            text = sentence(rng, label)
            if text not in seen:
                seen.add(text)
                rows.append(Example(text, label))
        splits.append(rows)
    return TaskData("tiny", ["negative", "positive"], *splits)


def keyword_probs(points: list) -> np.ndarray:
    """A perfect-on-its-own-terms labeller: more good than bad words -> positive."""
    out = np.zeros((len(points), 2), dtype=np.float32)
    for i, p in enumerate(points):
        words = p.text.lower().replace(".", " ").split()
        score = sum(w in GOOD for w in words) - sum(w in BAD for w in words)
        out[i] = (0.1, 0.9) if score > 0 else (0.9, 0.1)
    return out

