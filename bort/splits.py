"""Label maps, row checks and seeded, group-aware splitting of raw task rows.

A *group* joins every row that shares the config's group column (a film for Rotten Tomatoes)
**or** the same text (whitespace and case ignored; the whole pair for pair tasks). Groups are
ordered by a hash of the seed and their name, then fill test, dev and train in turn: splits are
identical for one seed, differ for another, and move little when rows are added. Because identical
texts always share a group, no text lands in two splits and nothing has to be dropped. A source
with a fixed test file (GLUE dev) must not repeat a training text: that is an error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from bort.errors import DataError
from bort.taskfiles import RawRow, RawTable, normalize_text

log = logging.getLogger(__name__)

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")


def where(row: RawRow) -> str:
    """``file: line N`` for messages (just the file for one-document-per-file sources)."""
    return f"{row.file}: line {row.line}" if not row.file.endswith(".txt") else row.file


def map_labels(table: RawTable, allowed: list[str]) -> tuple[list[str], list[str]]:
    """Label names in order, and each row's label name (train rows, then fixed test rows).

    The order is ``task.labels`` if set, else the source's own (Rotten Tomatoes: rotten, fresh),
    else sorted (numerically when every label is an integer).

    Raises:
        DataError: an empty label, a column mixing types, a label outside ``task.labels``, or a
            fixed-test label that train never has.
    """
    rows = table.rows + (table.test_rows or [])
    names = _row_label_names(rows, table, allowed)
    train_names = set(names[: len(table.rows)])
    for row, name in zip(table.test_rows or [], names[len(table.rows):], strict=True):
        if name not in train_names:
            raise DataError(f"{where(row)}: unknown label {name!r}: train has only "
                            f"{', '.join(sorted(train_names))}; fix the row or add training rows with it")
    if allowed:
        order = list(allowed)
    elif table.label_order:
        order = list(table.label_order)
    elif all(_INT.fullmatch(n) for n in train_names):
        order = sorted(train_names, key=int)
    else:
        order = sorted(train_names)
    return order, names


def _label_kind(value: Any, row: RawRow, table: RawTable) -> tuple[str, str]:
    """(kind, name) of a raw label: kind is int, str or bool; CSV / TSV digits count as int."""
    column = table.columns[2]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where(row)}: unknown label: {column!r} is empty; give every row a label")
    if isinstance(value, bool):
        return "bool", str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return "int", str(value)
    if not isinstance(value, str):
        raise DataError(f"{where(row)}: label {value!r} in {column!r} is a {type(value).__name__}; "
                        "labels must be class names or integers (regression is not supported)")
    value = value.strip()
    if not table.typed_labels and _INT.fullmatch(value):
        return "int", str(int(value))
    if not table.typed_labels and _FLOAT.fullmatch(value):
        if float(value).is_integer():  # "1.0": a class id written by a float-typed table
            return "int", str(int(float(value)))
        raise DataError(f"{where(row)}: label {value!r} in column {column!r} is a fractional number: a "
                        "regression target (like STS-B's similarity scores), and regression is not "
                        f"supported; give {column!r} class names or integers, or point task.label_column "
                        "at a column of classes")
    return "str", value


def _row_label_names(rows: list[RawRow], table: RawTable, allowed: list[str]) -> list[str]:
    first_of_kind: dict[str, tuple[RawRow, str]] = {}
    names = []
    for row in rows:
        kind, name = _label_kind(row.label, row, table)
        first_of_kind.setdefault(kind, (row, name))
        if len(first_of_kind) > 1:
            (k1, (r1, n1)), _ = first_of_kind.items()
            there = f"line {r1.line}" if r1.file == row.file else where(r1)
            raise DataError(
                f"{where(row)}: label column {table.columns[2]!r} mixes types: {name!r} here is {kind}, "
                f"but {there} has {k1} {n1}; make every label a class name or every label an integer"
            )
        if allowed and name not in allowed:
            raise DataError(f"{where(row)}: unknown label {name!r}; task.labels allows "
                            f"{', '.join(allowed)}; fix the row or add the label to task.labels")
        names.append(name)
    return names


def check_rows(table: RawTable) -> None:
    """Every text a non-empty string; no fixed-test row repeating a training text.

    Raises:
        DataError: naming the file, line and fix.
    """
    text_col, pair_col, _ = table.columns
    for row in table.rows + (table.test_rows or []):
        for value, column in ((row.text, text_col), (row.text_pair, pair_col)):
            if column is None:
                continue
            if not isinstance(value, str):
                raise DataError(f"{where(row)}: {column!r} is {type(value).__name__} {value!r}, expected "
                                "text; quote it as a string")
            if not value.strip():
                raise DataError(f"{where(row)}: {column!r} is empty; every row needs a text: fill or remove it")
    if table.test_rows:
        seen = {text_key(r): r for r in table.rows}
        for row in table.test_rows:
            if (other := seen.get(text_key(row))) is not None:
                raise DataError(f"{where(row)}: duplicate row across splits: the same text is in "
                                f"{other.file} line {other.line}; remove it from one of the two files")


def text_key(row: RawRow) -> str:
    """What makes two rows the same text: normalised text, plus the normalised pair if any."""
    key = normalize_text(row.text)
    return key if row.text_pair is None else f"{key}\x00{normalize_text(row.text_pair)}"


def components(rows: Sequence[RawRow]) -> list[int]:
    """Union-find: rows sharing a group or a text get one component id (a root row's index)."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        keys = [("t", text_key(row))] + ([("g", row.group)] if row.group is not None else [])
        for key in keys:
            parent[find(i)] = find(first.setdefault(key, i))
    return [find(i) for i in range(len(rows))]


def assign(rows: Sequence[RawRow], seed: int, dev_fraction: float, test_fraction: float) -> list[str]:
    """Split name (train, dev, test) per row; groups in seeded-hash order fill test, then dev."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(components(rows)):
        members.setdefault(c, []).append(i)
    # A component is named by its smallest key, so its hash does not depend on row order.
    names = {c: min(rows[i].group or text_key(rows[i]) for i in idx) for c, idx in members.items()}
    order = sorted(members, key=lambda c: hashlib.sha256(f"{seed}\x00{names[c]}".encode()).digest())
    targets = {"test": round(test_fraction * len(rows)), "dev": round(dev_fraction * len(rows))}
    filled: Counter = Counter()
    out = [""] * len(rows)
    for c in order:
        split = next((s for s in ("test", "dev") if filled[s] < targets[s]), "train")
        filled[split] += len(members[c])
        for i in members[c]:
            out[i] = split
    log.debug("split %d rows in %d groups: %s", len(rows), len(members), dict(filled))
    return out


def cap(examples: list[Any], limit: int, rng: np.random.Generator) -> list[Any]:
    """A seeded, label-stratified sample of `limit` examples (all of them when limit is 0 or more)."""
    if limit <= 0 or len(examples) <= limit:
        return examples
    order = rng.permutation(len(examples))
    totals = Counter(e.label for e in examples)
    seen: Counter = Counter()
    quantile = np.empty(len(examples))
    for i in order:  # each label's rows spread evenly over [0, 1): the lowest `limit` keep proportions
        quantile[i] = (seen[examples[i].label] + 0.5) / totals[examples[i].label]
        seen[examples[i].label] += 1
    rank = np.empty(len(examples))
    rank[order] = np.arange(len(examples))
    keep = np.lexsort((rank, quantile))[:limit]
    return [examples[i] for i in sorted(keep)]

