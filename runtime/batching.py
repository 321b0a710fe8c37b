"""How one batch of tokenised texts is run: split by length into calls, each cut to its longest row.

A merged call padded to its longest text spends much of its time on padding when a 60-token review
shares it with 10-token ones; one call per text gives up what batching saves (the fixed cost of a
call, and wider matrix products). :func:`length_buckets` picks the grouping in between. The
service's predictor, the speed comparison that decides the deployed precision
(:mod:`runtime.speed`) and the load test's ceiling all run batches through :func:`run_batch`, so
they time the same thing. Ships in the Bento: numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# What one more onnxruntime call costs, in tokens of work: splitting a batch by length pays when it
# saves more padding than this per extra call. A 3-layer, 192-wide student at 2 threads: a call's
# fixed cost is ~0.16 ms, a token ~0.01 ms (bench/results/throughput.md); for larger models a call
# costs relatively less, so the constant errs towards fewer, slightly more padded calls.
CALL_COST_TOKENS = 16


def length_buckets(lengths: Any, call_cost_tokens: float = CALL_COST_TOKENS) -> list[list[int]]:
    """Row indices grouped into calls: the split of the rows, sorted by length, that minimises the
    padded tokens computed plus `call_cost_tokens` per call (exact dynamic programme, O(n^2) over a
    batch of at most a few dozen rows). Rows of one length always share a call."""
    order = sorted(range(len(lengths)), key=lambda i: int(lengths[i]))
    ordered = [int(lengths[i]) for i in order]
    best, cut = [0.0] + [float("inf")] * len(ordered), [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        for begin in range(end):  # sorted rows begin..end-1 in one call as wide as the longest, ordered[end-1]
            cost = best[begin] + call_cost_tokens + (end - begin) * ordered[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    groups, end = [], len(ordered)
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def run_batch(session: Any, feeds: dict[str, np.ndarray], bucket: bool = True) -> tuple[np.ndarray, int, int]:
    """The first output of `session` for a padded (rows, width) batch, run as :func:`length_buckets`
    calls when `bucket` (rows keep their order in the result).

    Returns:
        ``(output (rows, ...), calls made, tokens computed including padding)``.
    """
    rows, width = feeds["input_ids"].shape
    mask = feeds.get("attention_mask")
    lengths = mask.sum(axis=1) if mask is not None else np.full(rows, width)
    groups = length_buckets(lengths) if bucket and rows > 1 else [list(range(rows))]
    if len(groups) == 1:
        cut = int(lengths.max()) if rows else width
        trimmed = feeds if cut == width else {n: np.ascontiguousarray(a[:, :cut]) for n, a in feeds.items()}
        return session.run(None, trimmed)[0], 1, rows * cut
    out, computed = None, 0
    for group in groups:
        index = np.asarray(group)
        cut = int(lengths[index].max())
        part = session.run(None, {n: np.ascontiguousarray(a[index, :cut]) for n, a in feeds.items()})[0]
        if out is None:
            out = np.empty((rows, *part.shape[1:]), dtype=part.dtype)
        out[index] = part
        computed += len(group) * cut
    return out, len(groups), computed
