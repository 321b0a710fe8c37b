"""The checks and sidecars of ``bort export``: labels, ``serving.json``, parity, accuracy, latency.

The export and quantisation themselves are the one recipe in :mod:`runtime.recipe` (which the
search's latency and the load test's architecture-only models use too). Each function takes
folders, so :mod:`serve.export` reads like a table of contents. Every folder written for
``bort export`` is self-contained (``model.onnx``, tokenizer files, ``config.json``,
``serving.json``): the service needs nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bort import metrics
from bort.errors import ArtifactError, BortError
from serve.predictor import Predictor

log = logging.getLogger(__name__)


class ParityError(BortError):
    """The ONNX graph does not reproduce the PyTorch model within the tolerance."""


def model_labels(model_dir: Path) -> list[str]:
    """The model's class names in id order (its ``config.json`` ``id2label``; may be empty)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [id2label[i] for i in sorted(id2label)]


def labels_of(model_dir: Path, task_labels: list[str]) -> list[str]:
    """Class names in id order: the model's ``id2label`` unless it only holds ``LABEL_i`` names."""
    names = model_labels(model_dir)
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = list(task_labels)
    if len(names) != len(task_labels) or set(names) != set(task_labels):
        raise ArtifactError(
            f"{model_dir}: the model's labels {names} do not match the task's labels {task_labels}; "
            "rerun `bort finetune` for this task"
        )
    return names


def model_max_seq_len(model_dir: Path) -> int:
    """Longest input the model's position table allows (RoBERTa reserves padding_idx + 1)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    positions = int(config.get("max_position_embeddings", 512))
    offset = 2 if config.get("model_type") in ("roberta", "xlm-roberta", "mpnet") else 0
    return positions - offset


def check_parity(model_dir: Path, fp32_dir: Path, texts: list[str], pairs: list[Any] | None,
                 seq_len: int, atol: float) -> dict[str, Any]:
    """Max |logit difference| between PyTorch and the fp32 ONNX graph on the same token ids.

    Also checks the serving tokenizer (``tokenizers`` on ``tokenizer.json``) gives the same ids
    as the Hugging Face tokenizer the model was trained with.

    Raises:
        ParityError: the difference exceeds ``atol``, or the tokenizers disagree.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    predictor = Predictor(fp32_dir, num_threads=torch.get_num_threads(), max_seq_len=seq_len)
    batch = predictor.tokenize(texts, pairs)
    hf = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    first, second = ([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else (texts, None)
    hf_ids = hf(first, second, padding=True, truncation=True, max_length=predictor.max_seq_len,
                return_tensors="np")["input_ids"]
    if hf_ids.shape != batch.feeds["input_ids"].shape or not (hf_ids == batch.feeds["input_ids"]).all():
        raise ParityError(f"{fp32_dir}/tokenizer.json tokenises differently from {model_dir}'s tokenizer")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    with torch.inference_mode():
        torch_logits = model(**{k: torch.from_numpy(v) for k, v in batch.feeds.items()}).logits.numpy()
    onnx_logits = predictor.logits(batch.feeds)  # (batch, classes)
    diff = float(np.abs(torch_logits - onnx_logits).max())
    if not diff < atol:
        raise ParityError(
            f"ONNX fp32 logits differ from PyTorch by {diff:.3g} on {len(texts)} dev texts "
            f"(export.parity_atol={atol}); the export of {model_dir} is wrong. Raise the tolerance "
            "only if the model is known to be numerically sensitive"
        )
    return {"parity_max_abs_diff": diff, "parity_texts": len(texts), "tokenizer_match": True}


def split_scores(folder: Path, examples: list[Any], is_pair: bool, task_labels: list[str], *,
                 num_threads: int, seq_len: int, batch_size: int, desc: str) -> dict[str, float]:
    """Every metric of :data:`bort.metrics.METRICS` (0-1) of an exported folder on one split's examples
    (``text``, ``text_pair``, ``label``).

    ``label`` indexes ``task_labels``; the model's class ids are mapped through their names, so a
    model whose label order differs from the task's is still scored right.
    """
    from tqdm.auto import tqdm

    predictor = Predictor(folder, num_threads=num_threads, max_seq_len=seq_len)
    to_task = np.array([task_labels.index(name) for name in predictor.labels])  # model id -> task id
    predicted = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        chunk = examples[start:start + batch_size]
        pairs = [(e.text, e.text_pair) for e in chunk] if is_pair else None
        batch = predictor.tokenize([e.text for e in chunk], pairs)
        predicted.extend(to_task[predictor.logits(batch.feeds).argmax(axis=-1)].tolist())
    return metrics.scores([e.label for e in examples], predicted, len(task_labels))


def split_accuracy(folder: Path, examples: list[Any], is_pair: bool, task_labels: list[str], **kwargs: Any) -> float:
    """Accuracy (0-1) of an exported folder on one split: :func:`split_scores`' accuracy."""
    return split_scores(folder, examples, is_pair, task_labels, **kwargs)["accuracy"]


def measure_latency(folder: Path, *, seq_len: int, num_threads: int, warmup_runs: int,
                    timed_runs: int, seed: int = 0) -> dict[str, float]:
    """Model-only latency in ms at batch 1 and exactly ``seq_len`` tokens (no tokenisation).

    Returns:
        ``{"p50", "p90", "p99", "mean", "runs"}``.
    """
    predictor = Predictor(folder, num_threads=num_threads, max_seq_len=seq_len)
    rng = np.random.default_rng(seed)
    vocab = predictor.tokenizer.get_vocab_size()
    feeds = {
        "input_ids": rng.integers(1000, vocab, size=(1, seq_len), dtype=np.int64),
        "attention_mask": np.ones((1, seq_len), dtype=np.int64),
        "token_type_ids": np.zeros((1, seq_len), dtype=np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in predictor.input_names}
    return time_calls(lambda: predictor.logits(feeds), warmup_runs, timed_runs)


def time_calls(call: Any, warmup_runs: int, timed_runs: int) -> dict[str, float]:
    """Percentiles in ms of ``timed_runs`` calls after ``warmup_runs`` untimed ones."""
    for _ in range(warmup_runs):
        call()
    times = []
    for _ in range(timed_runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
            "mean": round(float(np.mean(times)), 3), "runs": timed_runs}


def onnx_size_mb(folder: Path) -> float:
    """Size of ``model.onnx`` in MB."""
    return round((folder / "model.onnx").stat().st_size / 1e6, 2)
