"""A labelled task's examples and splits: the types every stage trains and evaluates on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bort.errors import DataError

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled example. `label` indexes :attr:`TaskData.labels`; `group` keeps related rows together."""

    text: str
    label: int
    text_pair: str | None = None
    group: str | None = None


@dataclass
class TaskData:
    """A task's label names and its train / dev / test examples."""

    name: str
    labels: list[str]
    train: list[Example]
    dev: list[Example]
    test: list[Example]

    @property
    def is_pair(self) -> bool:
        """True for text-pair tasks (e.g. entailment)."""
        return any(e.text_pair is not None for e in (*self.train[:1], *self.dev[:1], *self.test[:1]))

    def split(self, name: str) -> list[Example]:
        """The examples of split `name` (train, dev or test)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def balance(self) -> dict[str, dict[str, int]]:
        """Per split, the number of examples of each label name."""
        out = {}
        for name in SPLITS:
            counts = Counter(e.label for e in self.split(name))
            out[name] = {label: counts.get(i, 0) for i, label in enumerate(self.labels)}
        return out
