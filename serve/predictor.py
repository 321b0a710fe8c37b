"""Inference over an exported folder: ``tokenizers`` + an onnxruntime session, nothing heavier.

This module is what the Bento ships: it imports neither bentoml nor torch (a test checks), so
the serving image holds onnxruntime, tokenizers and numpy only.

An exported folder (``bort export`` writes one per role and precision) holds ``model.onnx``,
``tokenizer.json``, ``config.json`` and ``serving.json`` (``max_seq_len``, ``labels``,
``is_pair``, ``precision``, ``name``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SERVING_FILE = "serving.json"
REQUIRED_FILES = ("model.onnx", "tokenizer.json", SERVING_FILE)


class ModelFolderError(Exception):
    """The folder is not a complete ``bort export`` output."""


@dataclass(frozen=True)
class Batch:
    """Tokenised inputs, each (batch, seq) int64, plus which rows were truncated."""

    feeds: dict[str, np.ndarray]
    truncated: list[bool]


def read_serving(folder: str | Path) -> dict[str, Any]:
    """The folder's ``serving.json``, after checking the files a predictor needs are there."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(
            f"{folder} is not an exported model folder (missing {', '.join(missing)}); "
            "run `bort export` and point at run_dir/export/<role>/<precision>"
        )
    return json.loads((folder / SERVING_FILE).read_text(encoding="utf-8"))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (batch, classes) logits, stable for large values."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def session_options(num_threads: int, spin: bool = True, spin_stop: bool = False) -> Any:
    """onnxruntime options for one serving process: fixed intra-op threads, sequential graph.

    ``spin=False`` stops idle intra-op threads from busy-waiting: on a machine with few cores
    a spinning pool takes CPU from the HTTP loop between requests. ``spin_stop=True`` keeps the
    busy-wait inside a call (between the graph's operators, where it saves wake-ups) but ends it
    when the call returns (onnxruntime's ``session.force_spinning_stop``).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin_stop:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


class Predictor:
    """Classify texts (or text pairs) with an exported model folder.

    Args:
        folder: an exported folder (``model.onnx``, ``tokenizer.json``, ``serving.json``).
        num_threads: onnxruntime intra-op threads.
        max_seq_len: truncate inputs to this many tokens (capped by the model's own limit).
        spin: let idle onnxruntime threads busy-wait (lower latency, more CPU).
        spin_stop: end that busy-wait when each call returns (see :func:`session_options`).
    """

    def __init__(self, folder: str | Path, num_threads: int = 2, max_seq_len: int = 128,
                 spin: bool = True, spin_stop: bool = False) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.serving = read_serving(self.folder)
        self.labels: list[str] = list(self.serving["labels"])
        self.is_pair: bool = bool(self.serving.get("is_pair", False))
        self.name: str = str(self.serving.get("name", self.folder.name))
        self.max_seq_len = min(int(max_seq_len), int(self.serving["max_seq_len"]))
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_seq_len)
        pad = self.serving.get("pad_token", "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad)
        # Pad to the longest text of the batch, never to a fixed length a saved tokenizer may carry.
        self.tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)
        self.session = ort.InferenceSession(
            str(self.folder / "model.onnx"), sess_options=session_options(num_threads, spin, spin_stop),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.num_threads = num_threads

    def tokenize(self, texts: list[str], pairs: list[tuple[str, str]] | None = None) -> Batch:
        """Token ids, attention mask and (when the graph wants them) type ids, (batch, seq) int64."""
        if pairs is not None:
            encodings = self.tokenizer.encode_batch([tuple(p) for p in pairs])
        else:
            encodings = self.tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        feeds = {name: arrays[name] for name in self.input_names}
        return Batch(feeds=feeds, truncated=[len(e.overflowing) > 0 for e in encodings])

    def warm_up(self) -> None:
        """One call, so the first request does not pay onnxruntime's lazy initialisation."""
        if self.is_pair:
            self.predict(pairs=[("warm up", "warm up")])
        else:
            self.predict(texts=["warm up"])

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Raw (batch, classes) float32 logits for already tokenised inputs."""
        return self.session.run(None, feeds)[0]

    def predict(self, texts: list[str] | None = None,
                pairs: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """Per input: ``{"label", "score", "scores": {label: p}, "truncated"}``.

        Give ``texts`` for single-text models and ``pairs`` for pair models.
        """
        if not texts and not pairs:
            return []
        batch = self.tokenize(texts or [], pairs)
        probs = softmax(self.logits(batch.feeds).astype(np.float64))  # (batch, classes)
        best = probs.argmax(axis=-1)
        out = []
        for row, idx, truncated in zip(probs, best, batch.truncated, strict=True):
            out.append({
                "label": self.labels[int(idx)],
                "score": round(float(row[idx]), 6),
                "scores": {label: round(float(p), 6) for label, p in zip(self.labels, row, strict=True)},
                "truncated": truncated,
            })
        return out
