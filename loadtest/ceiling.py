"""A ceiling to measure against: the model's own throughput at the batches the server formed.

While Locust drives a service, the service appends one line per model call to a call log
(``BORT_SERVE_CALL_LOG``, :class:`serve.predictor.Predictor`): the texts merged into the call, its
padded width, the real tokens, how many length buckets it ran as, and its times. From the calls
in a run's measured window this module gives

- **the batches**: calls, texts per call (mean, p50, p90, max), and the padding: the share of the
  computed tokens that were padding, merged as one call and as the server ran it (bucketed);
- **the ceiling**: raw onnxruntime on the same texts, same threads, at those batch sizes: a seeded
  sample of the recorded calls is replayed in this process after the service has stopped, each
  with as many texts drawn from the request pool as the call had, tokenised outside the timing
  and run as the predictor runs a call (:func:`runtime.batching.run_batch`, in the session
  :func:`runtime.session.open_session` makes: the service's options, spinning included).
  Texts/s over the replayed calls, divided by texts per request, is the requests/s the model
  alone could answer; served requests/s over that is the fraction the service delivers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("time_s", "rows", "width", "tokens", "calls", "padded", "tokenize_ms", "model_ms")
CALL_LOG_ENV = "BORT_SERVE_CALL_LOG"


def read_calls(path: Path, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
    """The logged calls whose end time lies in [since, until], as an (n, 8) array in :data:`COLUMNS` order
    (a torn last line, from a server stopped mid-write, is skipped)."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            parts = line.split(",")
            if len(parts) != len(COLUMNS):
                continue
            try:
                values = [float(x) for x in parts]
            except ValueError:
                continue
            if since <= values[0] <= until:
                rows.append(values)
    return np.asarray(rows, dtype=float).reshape(-1, len(COLUMNS))


def batch_profile(calls: np.ndarray) -> dict[str, Any]:
    """Texts per model call and what padding cost, over `calls` (:func:`read_calls`)."""
    if calls.shape[0] == 0:
        return {"calls": 0}
    rows, width, tokens, padded = calls[:, 1], calls[:, 2], calls[:, 3], calls[:, 5]
    p50, p90 = np.percentile(rows, [50, 90])
    return {"calls": int(calls.shape[0]), "texts": int(rows.sum()), "mean_texts": round(float(rows.mean()), 2),
            "p50_texts": float(p50), "p90_texts": float(p90), "max_texts": int(rows.max()),
            "padding_share_merged": round(float(1.0 - tokens.sum() / (rows * width).sum()), 4),
            "padding_share_served": round(float(1.0 - tokens.sum() / padded.sum()), 4),
            "bucketed_calls": int((calls[:, 4] > 1).sum()),
            "model_ms_per_text": round(float(calls[:, 7].sum() / rows.sum()), 4),
            "tokenize_ms_per_text": round(float(calls[:, 6].sum() / rows.sum()), 4)}


class RawModel:
    """An exported folder's tokenizer and onnxruntime session, nothing else: the model as the service
    runs it (:func:`runtime.session.open_session`, :func:`runtime.batching.run_batch`) without the
    service. Tokenising is not timed."""

    def __init__(self, folder: Path, num_threads: int, max_seq_len: int) -> None:
        from tokenizers import Tokenizer

        from runtime.session import open_session

        serving = json.loads((Path(folder) / "serving.json").read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=min(max_seq_len, int(serving["max_seq_len"])))
        self.tokenizer.no_padding()
        self.pad_id = self.tokenizer.token_to_id(serving.get("pad_token") or "[PAD]") or 0
        self.session = open_session(Path(folder) / "model.onnx", num_threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def feeds(self, items: list[Any]) -> dict[str, np.ndarray]:
        """(rows, longest) int64 inputs for texts, or ``[a, b]`` pairs, padded as the predictor pads."""
        encodings = self.tokenizer.encode_batch([tuple(x) if isinstance(x, list | tuple) else x for x in items])
        width = max(len(e.ids) for e in encodings)
        arrays = {"input_ids": np.full((len(items), width), self.pad_id, np.int64),
                  "attention_mask": np.zeros((len(items), width), np.int64),
                  "token_type_ids": np.zeros((len(items), width), np.int64)}
        for row, e in enumerate(encodings):
            n = len(e.ids)
            arrays["input_ids"][row, :n], arrays["attention_mask"][row, :n] = e.ids, 1
            arrays["token_type_ids"][row, :n] = e.type_ids
        return {name: arrays[name] for name in self.input_names}

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        from runtime.batching import run_batch

        run_batch(self.session, feeds)


def replay(folder: Path, call_rows: np.ndarray, items: list[Any], *, num_threads: int, max_seq_len: int,
           max_calls: int = 400, budget_s: float = 8.0, seed: int = 0) -> dict[str, Any]:
    """Raw onnxruntime throughput at the batch sizes in `call_rows` (texts per call), on `items`.

    Replays up to `max_calls` of them (a seeded sample, in random order; at least 3 even past `budget_s`),
    each twice, keeping the faster: the ceiling is the model's capacity, and other work on a shared
    machine only ever slows a call down.

    Returns:
        ``{"texts_per_s", "calls", "texts", "model_s"}``.
    """
    model = RawModel(folder, num_threads, max_seq_len)
    model.run(model.feeds(items[:1]))  # onnxruntime's lazy initialisation, outside the timing
    rng = np.random.default_rng(seed)
    sizes = rng.permutation(np.asarray(call_rows, dtype=int))[:max_calls]
    spent, texts, done, started = 0.0, 0, 0, time.monotonic()
    for size in sizes:
        feeds = model.feeds([items[int(i)] for i in rng.integers(len(items), size=int(size))])
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            model.run(feeds)
            best = min(best, time.perf_counter() - start)
        spent += best
        texts, done = texts + int(size), done + 1
        if done >= 3 and time.monotonic() - started > budget_s:
            break
    return {"texts_per_s": round(texts / spent, 1) if spent else None, "calls": done, "texts": texts,
            "model_s": round(spent, 3)}


def ceiling_figures(figures: dict[str, Any], calls: np.ndarray, folder: Path, items: list[Any], *,
                    num_threads: int, max_seq_len: int, texts_per_request: int, seed: int = 0) -> dict[str, Any]:
    """The batches of one Locust run and the ceiling beside its served requests/s (``figures["rps"]``)."""
    out: dict[str, Any] = {"batches": batch_profile(calls)}
    if calls.shape[0] == 0:
        return out
    raw = replay(folder, calls[:, 1], items, num_threads=num_threads, max_seq_len=max_seq_len, seed=seed)
    if raw["texts_per_s"]:
        ceiling_rps = raw["texts_per_s"] / texts_per_request
        out.update(ceiling_rps=round(ceiling_rps, 1), served_fraction=round(figures["rps"] / ceiling_rps, 3),
                   ceiling=raw)
    return out
