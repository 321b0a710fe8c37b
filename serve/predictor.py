"""Inference over an exported folder: ``tokenizers`` + an onnxruntime session, nothing heavier.

This module is what the Bento ships: it imports neither bentoml nor torch (a test checks), so
the serving image holds onnxruntime, tokenizers and numpy only. Its onnxruntime session comes from
:mod:`runtime.session`, the one the search times and ``bort export`` checks with.

An exported folder (``bort export`` writes one per role and precision) holds ``model.onnx``,
``tokenizer.json``, ``config.json`` and ``serving.json`` (``max_seq_len``, ``labels``,
``is_pair``, ``precision``, ``quantization``, ``name``).

A batch of texts of different lengths is run split by length (:mod:`runtime.batching`): one call
padded to its longest text spends much of its time on padding when a 60-token review shares it
with 10-token ones (measured in ``bench/results/throughput.md``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.batching import run_batch
from runtime.session import SERVING_FILE, open_session

log = logging.getLogger(__name__)

# A text longer than this many characters per allowed token is cut at a space before tokenising.
CUT_CHARS_PER_TOKEN = 6
# Printable ASCII plus tab, newline and carriage return: a BERT normaliser only lowercases it.
_ASCII_PLAIN = re.compile(r"[\t\n\r\x20-\x7e]*")
WHITESPACE_PRE_TOKENIZERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
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


def ascii_normalizer(spec: dict | None) -> Any:
    """The normaliser that does to plain ASCII text what ``spec`` (a ``tokenizer.json``
    normaliser) does, when it is cheaper; else None. A ``BertNormalizer`` only lowercases such
    text (or leaves it alone): its cleaning, accent stripping and CJK spacing touch nothing
    printable-ASCII, and tab, newline and carriage return split words either way."""
    from tokenizers import normalizers

    if not spec or spec.get("type") != "BertNormalizer":
        return None
    return normalizers.Lowercase() if spec.get("lowercase", True) else normalizers.Sequence([])


def splits_on_whitespace(spec: dict) -> bool:
    """Whether the tokenizer's words never cross whitespace, so a text cut at a space
    tokenises, up to the cut, as the whole text does: a whitespace-splitting pre-tokeniser,
    a per-character normaliser, right-hand truncation."""
    pre = (spec.get("pre_tokenizer") or {}).get("type")
    norm = (spec.get("normalizer") or {}).get("type")
    return pre in WHITESPACE_PRE_TOKENIZERS and norm in (None, "BertNormalizer", "Lowercase")


def cut_at_space(text: str, limit: int) -> str:
    """``text`` up to the last space at or before ``limit`` characters (whole when shorter, or
    when no space is there to cut at)."""
    if len(text) <= limit:
        return text
    at = text.rfind(" ", 0, limit + 1)
    return text[:at] if at > 0 else text


def batch_invariant(serving: dict[str, Any]) -> bool:
    """Whether a folder's answers are the same for a text alone and in any batch (its ``serving.json``):
    fp32, and static int8 (fixed, calibrated activation scales); not dynamic int8, which scales
    activations by the whole batch (folders from before static int8 say only ``"precision": "int8"``)."""
    precision = serving.get("precision", "fp32")
    quantization = serving.get("quantization", "dynamic" if precision == "int8" else None)
    return precision == "fp32" or quantization == "static"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (batch, classes) logits, stable for large values."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Predictor:
    """Classify texts (or text pairs) with an exported model folder.

    Args:
        folder: an exported folder (``model.onnx``, ``tokenizer.json``, ``serving.json``).
        num_threads: onnxruntime intra-op threads.
        max_seq_len: truncate inputs to this many tokens (capped by the model's own limit).
        spin: let idle onnxruntime threads busy-wait (lower latency, more CPU).
        spin_stop: end that busy-wait when each call returns (see :func:`runtime.session.session_options`).
        bucket: split a batch of texts of different lengths into calls by length (:mod:`runtime.batching`).
        call_log: a file to which every model call appends one CSV line (``time_s, rows, width,
            tokens, calls, padded, tokenize_ms, model_ms``): how big the merged batches are under
            load and what their padding costs (``bort loadtest`` and the benchmarks read it).
    """

    def __init__(self, folder: str | Path, num_threads: int = 2, max_seq_len: int = 128,
                 spin: bool = True, spin_stop: bool = False, bucket: bool = True,
                 call_log: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.serving = read_serving(self.folder)
        self.labels: list[str] = list(self.serving["labels"])
        self.is_pair: bool = bool(self.serving.get("is_pair", False))
        self.name: str = str(self.serving.get("name", self.folder.name))
        self.max_seq_len = min(int(max_seq_len), int(self.serving["max_seq_len"]))
        saved = (self.folder / "tokenizer.json").read_text(encoding="utf-8")
        spec = json.loads(saved)
        self.tokenizer = self._load_tokenizer(saved)
        pad = self.serving.get("pad_token", "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad)
        self.pad_id = 0 if pad_id is None else pad_id
        # Fast paths that give the same token ids (a test fuzzes both against the plain tokenizer):
        fast = ascii_normalizer(spec.get("normalizer"))
        self._ascii_tokenizer = None if fast is None else self._load_tokenizer(saved, fast)
        self._cut_chars = CUT_CHARS_PER_TOKEN * self.max_seq_len if splits_on_whitespace(spec) else None
        self.session = open_session(self.folder / "model.onnx", num_threads, spin, spin_stop)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.num_threads = num_threads
        self.bucket = bucket
        self._call_log = open(call_log, "a", buffering=1, encoding="utf-8") if call_log else None  # noqa: SIM115

    @property
    def batch_invariant(self) -> bool:
        """See :func:`batch_invariant`."""
        return batch_invariant(self.serving)

    def _load_tokenizer(self, saved: str, normalizer: Any = None) -> Any:
        """The saved tokenizer (its JSON text), truncating to ``max_seq_len``, not padding."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(saved)
        if normalizer is not None:
            tokenizer.normalizer = normalizer
        tokenizer.enable_truncation(max_length=self.max_seq_len)
        tokenizer.no_padding()  # padded here, to the longest row of the batch
        return tokenizer

    def tokenize(self, texts: list[str], pairs: list[tuple[str, str]] | None = None) -> Batch:
        """Token ids, attention mask and (when the graph wants them) type ids, (batch, seq) int64,
        padded to the batch's longest row."""
        if pairs is not None:
            encodings = self.tokenizer.encode_batch_fast([tuple(p) for p in pairs])
        else:
            encodings = self._encode_texts(texts)
        rows, width = len(encodings), max((len(e.ids) for e in encodings), default=0)
        ids = np.full((rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        feeds = {name: arrays[name] for name in self.input_names}
        return Batch(feeds=feeds, truncated=[len(e.overflowing) > 0 for e in encodings])

    def _encode_texts(self, texts: list[str]) -> list[Any]:
        """Encodings of single texts, through the fast paths where they give the same ids:

        - plain printable ASCII skips the Unicode half of a BERT normaliser (cleaning, accents,
          CJK spacing), which does nothing to such text;
        - a text far longer than the token limit is cut at a space first, when the pre-tokeniser
          splits on whitespace: words before the cut tokenise the same either way, and the
          shortened text is kept only if it still overflows the limit (else the whole text is
          encoded), so the ids and the truncation flag match the full text's.
        """
        encodings: list[Any] = [None] * len(texts)
        groups: dict[int, tuple[Any, list[int], list[str]]] = {}
        for i, text in enumerate(texts):
            ascii_ok = self._ascii_tokenizer is not None and _ASCII_PLAIN.fullmatch(text) is not None
            tokenizer = self._ascii_tokenizer if ascii_ok else self.tokenizer
            _, index, chunk = groups.setdefault(id(tokenizer), (tokenizer, [], []))
            index.append(i)
            chunk.append(cut_at_space(text, self._cut_chars) if self._cut_chars else text)
        for tokenizer, index, chunk in groups.values():
            for i, text, e in zip(index, chunk, tokenizer.encode_batch_fast(chunk), strict=True):
                if len(text) < len(texts[i]) and not e.overflowing:  # the cut went too far
                    e = tokenizer.encode_batch_fast([texts[i]])[0]
                encodings[i] = e
        return encodings

    def warm_up(self) -> None:
        """One call, so the first request does not pay onnxruntime's lazy initialisation."""
        if self.is_pair:
            self.predict(pairs=[("warm up", "warm up")])
        else:
            self.predict(texts=["warm up"])

    def logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Raw (batch, classes) float32 logits for already tokenised inputs."""
        return self.session.run(None, feeds)[0]

    def bucketed_logits(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, int, int]:
        """:meth:`logits` run as :func:`runtime.batching.run_batch` runs a batch: split by length
        into calls when ``bucket`` (on by default).

        Returns:
            ``(logits (batch, classes), calls, tokens computed including padding)``.
        """
        return run_batch(self.session, feeds, self.bucket)

    def predict(self, texts: list[str] | None = None, pairs: list[tuple[str, str]] | None = None,
                timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Per input: ``{"label", "score", "scores": {label: p}, "truncated"}``.

        Give ``texts`` for single-text models and ``pairs`` for pair models. ``timings``, when
        given, receives the milliseconds spent tokenising (``tokenize``) and in onnxruntime
        (``model``).
        """
        if not texts and not pairs:
            return []
        start = time.perf_counter()
        batch = self.tokenize(texts or [], pairs)
        tokenized = time.perf_counter()
        logits, calls, padded = self.bucketed_logits(batch.feeds)
        done = time.perf_counter()
        if timings is not None:
            timings["tokenize"] = (tokenized - start) * 1000.0
            timings["model"] = (done - tokenized) * 1000.0
        if self._call_log is not None:
            ids = batch.feeds["input_ids"]
            tokens = int(batch.feeds["attention_mask"].sum()) if "attention_mask" in batch.feeds else ids.size
            self._call_log.write(f"{time.time():.4f},{ids.shape[0]},{ids.shape[1]},{tokens},{calls},{padded},"
                                 f"{(tokenized - start) * 1000.0:.4f},{(done - tokenized) * 1000.0:.4f}\n")
        probs = softmax(logits.astype(np.float64))  # (batch, classes)
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
