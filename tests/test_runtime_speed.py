"""runtime.speed and runtime.batching: what "faster" means, and how a batch of mixed lengths is run."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import batching, speed


def figures(fp32=(1.0, 1.0), int8=(0.6, 0.6), static=(0.8, 0.4)):
    """{precision: (batch-1 p50 ms, load ms per text)} as runtime.speed.measure reports them."""
    return {p: {"batch1_p50_ms": b1, "load_ms_per_text": load}
            for p, (b1, load) in (("fp32", fp32), ("int8", int8), ("int8_static", static))}


def test_the_fastest_accurate_variant_under_load_is_deployed():
    precision, why, verdicts = speed.choose(figures(), {"int8": True, "int8_static": True})
    assert precision == "int8_static" and "2.50x fp32's texts/s under load" in why
    assert verdicts["int8"]["load_speedup"] == pytest.approx(1 / 0.6, abs=1e-3)


def test_an_inaccurate_variant_is_never_deployed_however_fast():
    precision, _, verdicts = speed.choose(figures(), {"int8": True, "int8_static": False})
    assert precision == "int8" and verdicts["int8_static"]["failed"] == ["accuracy gate"]


def test_int8_that_is_not_faster_on_this_cpu_leaves_fp32_deployed():
    # as measured on AVX2 without VNNI: dynamic int8 ~15% faster at batch 1, no faster under load
    slow = figures(int8=(0.87, 1.0), static=(0.95, 1.02))
    precision, why, verdicts = speed.choose(slow, {"int8": True, "int8_static": True})
    assert precision == "fp32" and "no int8 variant is both accurate and faster" in why
    assert any("under load" in f for f in verdicts["int8"]["failed"])


def test_a_variant_slower_at_one_user_is_not_deployed_for_its_throughput():
    precision, _, verdicts = speed.choose(figures(int8=(1.02, 0.9), static=(1.3, 0.3)), {"int8": True,
                                                                                       "int8_static": True})
    assert precision == "int8"
    assert any("at one user" in f for f in verdicts["int8_static"]["failed"])


def test_length_buckets_group_similar_lengths_and_keep_equal_lengths_together():
    assert batching.length_buckets([20] * 8) == [list(range(8))]
    groups = batching.length_buckets([10, 60, 11, 62, 12, 9], call_cost_tokens=16)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert [sorted(g) for g in groups] == [[0, 2, 4, 5], [1, 3]]
    assert batching.length_buckets([10, 60], call_cost_tokens=1000) == [[0, 1]]  # calls too dear to split


class EchoSession:
    """An onnxruntime stand-in whose output row is the row's token sum and real length."""

    def __init__(self):
        self.widths = []

    def run(self, _names, feeds):
        self.widths.append(feeds["input_ids"].shape)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        return [np.stack([(ids * mask).sum(axis=1), mask.sum(axis=1)], axis=1)]


def test_run_batch_cuts_each_call_to_its_longest_row_and_keeps_row_order():
    lengths = [3, 40, 4, 41]
    ids = np.zeros((4, 41), np.int64)
    mask = np.zeros((4, 41), np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n], mask[row, :n] = row + 1, 1
    session = EchoSession()
    out, calls, computed = batching.run_batch(session, {"input_ids": ids, "attention_mask": mask})
    assert calls == 2 and sorted(session.widths) == [(2, 4), (2, 41)] and computed == 2 * 4 + 2 * 41
    assert out[:, 1].tolist() == lengths and out[:, 0].tolist() == [(r + 1) * n for r, n in enumerate(lengths)]


def test_the_task_workload_has_a_median_length_text_and_seeded_bursts():
    rows = [[5] * n for n in (3, 9, 12, 30, 50)]
    work = speed.task_workload(rows, ["input_ids", "attention_mask"], batch=4, bursts=3, seed=1)
    assert work.median_tokens == 12 and work.single["input_ids"].shape == (1, 12)
    assert work.batch == 4 and len(work.bursts) == 3
    again = speed.task_workload(rows, ["input_ids", "attention_mask"], batch=4, bursts=3, seed=1)
    assert [[f["input_ids"].shape for f in b] for b in work.bursts] == \
           [[f["input_ids"].shape for f in b] for b in again.bursts]
    merged = speed.merge(work.bursts[0])
    assert merged["input_ids"].shape == (4, max(f["input_ids"].shape[1] for f in work.bursts[0]))
