"""Labelled task data: the examples every stage trains and evaluates on, and the ``bort data`` command.

:func:`load_task` reads the configured source (:mod:`bort.taskfiles`), maps labels to ids and
splits it seeded and group-aware (:mod:`bort.splits`: identical texts and rows of one group, e.g.
one film, never straddle splits). :func:`prepare` stores the splits in ``<run>/data/`` with a
manifest, so every stage sees the same rows; :func:`load_prepared` reads them back, verified.
:mod:`bort.task` holds the examples' types; :mod:`bort.corpus` makes the unlabelled distillation corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bort import splits
from bort.artifacts import (
    MANIFEST,
    atomic_write_json,
    atomic_write_text,
    read_manifest,
    sha256_file,
    stage_dir,
    stage_fingerprint,
    write_manifest,
)
from bort.errors import ArtifactError, DataError
from bort.task import SPLITS, Example, TaskData
from bort.taskfiles import read_source, source_files

if TYPE_CHECKING:
    from bort.config import RunConfig, TaskConfig

log = logging.getLogger(__name__)

STAGE = "data"


def load_task(cfg: RunConfig) -> TaskData:
    """Read ``cfg.task``'s source, map labels, split it with ``cfg.seed`` and apply the row caps.

    A GLUE folder's dev file becomes the test split; bort's dev split is carved out of its train
    file (``task.dev_fraction`` of it). Caps (``max_train_rows``, ``max_eval_rows``, ``max_dev_rows``) apply after
    splitting, as seeded label-stratified samples.

    Raises:
        DataError: a file is missing, empty, not UTF-8, lacks a column, or holds a bad row or label.
    """
    table = read_source(cfg.task)
    splits.check_rows(table)
    labels, names = splits.map_labels(table, list(cfg.task.labels))
    fixed_test = table.test_rows is not None
    assigned = splits.assign(table.rows, cfg.seed, cfg.task.dev_fraction,
                             0.0 if fixed_test else cfg.task.test_fraction)
    assigned += ["test"] * len(table.test_rows or [])
    ids = {name: i for i, name in enumerate(labels)}
    out: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for row, name, split in zip(table.rows + (table.test_rows or []), names, assigned, strict=True):
        pair = row.text_pair.strip() if table.is_pair else None
        out[split].append(Example(row.text.strip(), ids[name], pair, row.group))
    _check_split_sizes(out, cfg)
    rng = np.random.default_rng(cfg.seed)
    caps = {"train": cfg.task.max_train_rows, "dev": cfg.task.max_dev_rows or cfg.task.max_eval_rows,
            "test": cfg.task.max_eval_rows}
    for name in SPLITS:
        capped = splits.cap(out[name], caps[name], rng)
        out[name] = [capped[i] for i in rng.permutation(len(capped))]  # no file order left in a split
    log.info("task %s: %s rows", cfg.task.name, {k: len(v) for k, v in out.items()})
    return TaskData(cfg.task.name, labels, out["train"], out["dev"], out["test"])


def _check_split_sizes(out: dict[str, list[Example]], cfg: RunConfig) -> None:
    if not out["train"] or (cfg.task.dev_fraction > 0 and not out["dev"]):
        sizes = ", ".join(f"{k} {len(v)}" for k, v in out.items())
        raise DataError(f"task {cfg.task.name!r}: too few rows or groups to split ({sizes}); "
                        "add rows, or lower task.dev_fraction / task.test_fraction")


def source_digest(task_cfg: TaskConfig) -> str:
    """sha256 over the task's source files: a changed file makes stored splits stale."""
    h = hashlib.sha256()
    for path in source_files(task_cfg):
        if path.is_file():
            h.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def prepare(cfg: RunConfig, run_dir: str | Path) -> TaskData:
    """Split the task once and store it in ``<run>/data/``; reuse the stored splits while current.

    Stored splits are current when the manifest verifies, its fingerprint (seed and ``task``
    config) matches, and the source files hash as they did.
    """
    started = time.time()
    fingerprint = stage_fingerprint(cfg, STAGE)
    inputs = {"source": source_digest(cfg.task)}
    folder = stage_dir(run_dir, STAGE)
    try:
        previous = read_manifest(run_dir, STAGE)
    except ArtifactError:
        previous = None
    if previous is not None and previous.fingerprint == fingerprint and previous.inputs == inputs:
        log.info("data: stored splits in %s are current", folder)
        return check_servable(_read_splits(folder), cfg)
    task = check_servable(load_task(cfg), cfg)
    (folder / MANIFEST).unlink(missing_ok=True)  # a half-rewritten folder must not look current
    _write_splits(task, folder)
    metrics = {"labels": task.labels, "is_pair": task.is_pair, "balance": task.balance(),
               "rows": {name: len(task.split(name)) for name in SPLITS}}
    write_manifest(run_dir, STAGE, cfg, fingerprint=fingerprint, metrics=metrics, inputs=inputs,
                   started=started)
    return task


def check_servable(task: TaskData, cfg: RunConfig) -> TaskData:
    """`task`, when the service would take every one of its texts; else a DataError naming the setting.

    A text over ``serve.max_chars`` gets a 422 from the service: the served-latency probe, the export's
    served accuracy and the load test would each stop on it far into a run (BBC News: 49% of the
    articles are over the default 2000 characters), so the run stops before its first stage instead.
    """
    limit = cfg.serve.max_chars
    sizes = [len(t) for e in (*task.train, *task.dev, *task.test) for t in (e.text, e.text_pair) if t is not None]
    over = sum(n > limit for n in sizes)
    if over:
        raise DataError(f"task {task.name!r}: {over} of {len(sizes)} texts are longer than serve.max_chars={limit} "
                        f"(the longest has {max(sizes)} characters), and the service would refuse them; "
                        f"set serve.max_chars >= {max(sizes)} (configs/long-texts.yaml does for BBC News)")
    return task


def load_prepared(run_dir: str | Path) -> TaskData:
    """The splits :func:`prepare` stored, after verifying their hashes.

    Raises:
        ArtifactError: no stored splits (naming ``bort data --prepare``), or a file changed.
    """
    manifest = read_manifest(run_dir, STAGE)
    return _read_splits(manifest.dir)


def _write_splits(task: TaskData, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        lines = []
        for e in task.split(name):
            row = {"text": e.text, "label": e.label, "label_name": task.labels[e.label]}
            row.update({k: v for k, v in (("text_pair", e.text_pair), ("group", e.group)) if v is not None})
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        atomic_write_text(folder / f"{name}.jsonl", "".join(lines))
    atomic_write_json(folder / "labels.json", {"task": task.name, "labels": task.labels, "is_pair": task.is_pair,
                                               "label2id": {n: i for i, n in enumerate(task.labels)}})


def _read_splits(folder: Path) -> TaskData:
    try:
        meta = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
        out = {}
        for name in SPLITS:
            rows = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text("utf-8").split("\n") if line]
            out[name] = [Example(r["text"], int(r["label"]), r.get("text_pair"), r.get("group")) for r in rows]
        return TaskData(meta["task"], list(meta["labels"]), out["train"], out["dev"], out["test"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{folder}: stored splits are unreadable ({e}); rerun `bort data --prepare`") from e


def balance_table(task: TaskData) -> str:
    """Rows and class balance per split as a small fixed-width table."""
    kind = "text pairs" if task.is_pair else "single texts"
    total = sum(len(task.split(s)) for s in SPLITS)
    lines = [f"task {task.name}: {total:,} rows, {len(task.labels)} labels, {kind}"]
    width = max(15, *(len(label) for label in task.labels))
    lines.append(f"{'split':6}{'rows':>8}" + "".join(f"  {label:>{width}}" for label in task.labels))
    for name, counts in task.balance().items():
        n = len(task.split(name))
        cells = "".join(f"  {f'{c:,} ({100 * c / n:.1f}%)' if n else '0':>{width}}" for c in counts.values())
        lines.append(f"{name:6}{n:>8,}{cells}")
    return "\n".join(lines)


def command(cfg: RunConfig, run_dir: str | Path, args: Any = None) -> int:
    """``bort data``: print sizes and class balance per split; with ``--prepare``, store the splits."""
    store = bool(getattr(args, "prepare", False))
    task = prepare(cfg, run_dir) if store else load_task(cfg)
    print(balance_table(task))
    if store:
        print(f"splits stored in {stage_dir(run_dir, STAGE)}")
    return 0
