"""Unlabelled text for distillation: task train texts, the user's text files, dict-gcide definitions.

Sources are taken in that order of priority up to ``corpus.max_texts`` (task text first: it is
what task-specific distillation is for; each source is sampled seeded when it does not fit). The
result is deduplicated, never contains any dev or test text of the task (whitespace and case
ignored), is shuffled with the seed, and a ``corpus.heldout_fraction`` of it is held out.
"""

from __future__ import annotations

import glob
import gzip
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bort.errors import DataError
from bort.task import TaskData
from bort.taskfiles import decode_utf8, normalize_text

if TYPE_CHECKING:
    from bort.config import RunConfig

log = logging.getLogger(__name__)

MIN_GCIDE_WORDS = 6


def corpus_texts(cfg: RunConfig, task: TaskData) -> tuple[list[str], list[str]]:
    """The distillation corpus as (train texts, held-out texts), disjoint, seeded.

    Args:
        cfg: the run config (``corpus`` section and ``seed``).
        task: the split task; only its train split contributes text, its dev and test texts are
            removed from every source.

    Raises:
        DataError: a ``corpus.files`` glob matches nothing, a file is not UTF-8, or the corpus is empty.
    """
    c = cfg.corpus
    sources: list[tuple[str, list[str]]] = []
    if c.use_task_text:
        sources.append(("task", [t for e in task.train for t in (e.text, e.text_pair) if t]))
    if c.files:
        sources.append(("files", read_text_files(c.files)))
    if c.use_gcide:
        from bort import assets

        sources.append(("gcide", gcide_texts(assets.gcide_dict() or assets.fetch_gcide())))
    excluded = {normalize_text(t) for e in (*task.dev, *task.test) for t in (e.text, e.text_pair) if t}
    rng = np.random.default_rng([cfg.seed, 7])  # its own stream: independent of the task split's draws
    picked = _pick(sources, excluded, c.max_texts, rng)
    if not picked:
        raise DataError("corpus is empty: enable corpus.use_task_text, corpus.use_gcide or give corpus.files")
    picked = [picked[i] for i in rng.permutation(len(picked))]
    n_heldout = round(len(picked) * c.heldout_fraction)
    if c.heldout_fraction > 0 and len(picked) > 1:
        n_heldout = max(1, n_heldout)
    return picked[n_heldout:], picked[:n_heldout]


def _pick(sources: list[tuple[str, list[str]]], excluded: set[str], limit: int,
          rng: np.random.Generator) -> list[str]:
    """Dedupe and filter each source, then fill up to `limit` in source order (0: no limit)."""
    seen: set[str] = set()
    picked: list[str] = []
    for name, texts in sources:
        fresh, dropped = [], 0
        for text in texts:
            text = text.strip()
            key = normalize_text(text)
            if not key or key in seen:
                continue
            if key in excluded:
                dropped += 1
                continue
            seen.add(key)
            fresh.append(text)
        room = len(fresh) if limit <= 0 else max(0, limit - len(picked))
        if room < len(fresh):
            fresh = [fresh[i] for i in sorted(rng.choice(len(fresh), size=room, replace=False))]
        picked += fresh
        log.info("corpus: %s gives %d texts (%d equal to a dev/test text dropped)", name, len(fresh), dropped)
    return picked


def read_text_files(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Every non-empty line of every file the globs match (one text per line).

    Raises:
        DataError: a glob matches no file, or a file has bytes that are not UTF-8 (naming the line).
    """
    texts: list[str] = []
    for pattern in patterns:
        paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise DataError(f"corpus.files: {pattern!r} matches no file; fix the path or glob")
        for path in paths:
            lines = decode_utf8(path.read_bytes(), path).split("\n")
            texts += [line.strip() for line in lines if line.strip()]
    return texts


# dict-gcide's dictd text: headword lines at column 0, senses indented, source tags in brackets.
_FIRST_ENTRY = re.compile(r"^\S[^\n]*\\[^\n\\]+\\", re.MULTILINE)  # "A \A\ ..." starts the entries
_TAG_LINE = re.compile(r"^\[[^\]]*\]$")  # "[1913 Webster]" ends a unit
_NEW_UNIT = re.compile(r"^(?:\d+\.|\([a-z]\)|Note:|Usage:|Syn:)\s")
_ACCENT = re.compile(r"\[[`'\"^=~.,]?([a-z]{1,6})\]")  # caf[`e] -> cafe, [beta] -> beta
_BRACKET = re.compile(r"\[[^\[\]]*\]")  # etymologies and tags such as [Obs.]
_LEAD = re.compile(r"^(?:\d+\.|\([a-z]\)|Note:|Usage:|\([A-Z][\w.,& ]{0,40}\)|[;:,.])\s*")
_CITATION = re.compile(r"\s--\s?[A-Z0-9][^\"]{0,40}$")  # "... --Shak.", "... --Job xxii. 28."


def gcide_texts(path: str | Path) -> list[str]:
    """Prose from Debian dict-gcide's ``gcide.dict.dz``: definitions, notes and quotations.

    Headword lines (pronunciation, etymology) and synonym lists are dropped; markup is removed;
    units shorter than six words are skipped.
    """
    with gzip.open(path, "rb") as f:
        # The dictionary holds a few Windows-1252 bytes; replacing them loses a character, not a text.
        text = f.read().decode("utf-8", errors="replace")
    start = _FIRST_ENTRY.search(text)
    units: list[str] = []
    current: list[str] = []
    keep = boundary = True
    for line in text[start.start() if start else 0:].split("\n") + [""]:
        stripped = line.strip()
        closes = not stripped or _TAG_LINE.match(stripped)  # blank and "[1913 Webster]" lines end a unit
        head = not closes and line[:1] not in (" ", "\t")  # column 0: a headword with its etymology
        if closes or head or boundary or _NEW_UNIT.match(stripped):
            if keep and current:
                units.append(" ".join(current))
            current, boundary = [], bool(closes)
            keep = not head and not stripped.startswith("Syn:")  # synonym lists are not prose
        if not closes:
            current.append(stripped)
    out = [t for t in map(_clean_gcide, units) if t]
    log.info("dict-gcide: %d prose texts", len(out))
    return out


def _clean_gcide(unit: str) -> str:
    """Strip markup from one unit; empty when what is left is not prose."""
    text = _ACCENT.sub(r"\1", unit)
    for _ in range(2):  # brackets nest once in etymologies
        text = _BRACKET.sub("", text)
    text = text.replace("{", "").replace("}", "").replace("\ufffd", "'")
    while (m := _LEAD.match(text)) and m.end() > 0:
        text = text[m.end():]
    text = " ".join(_CITATION.sub("", text).split())
    letters = sum(ch.isalpha() or ch == " " for ch in text)
    if len(text.split()) < MIN_GCIDE_WORDS or "\\" in text or letters < 0.8 * len(text):
        return ""
    return text
