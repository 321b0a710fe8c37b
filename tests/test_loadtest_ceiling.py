"""loadtest.ceiling: the batches a server formed (its call log) and the model's own throughput at them."""

from __future__ import annotations

import numpy as np

from loadtest import ceiling


def test_the_call_log_window_and_batch_profile(tmp_path):
    log = tmp_path / "calls.csv"
    log.write_text("100.0,1,20,20,1,20,0.1,0.5\n"  # before the window (warm-up)
                   "101.0,4,30,80,2,90,0.2,1.0\n"
                   "102.0,2,10,18,1,20,0.1,0.4\n"
                   "102.5,3,4")  # torn: the server stopped mid-write
    calls = ceiling.read_calls(log, since=100.5)
    profile = ceiling.batch_profile(calls)
    assert profile["calls"] == 2 and profile["texts"] == 6 and profile["max_texts"] == 4
    assert profile["padding_share_merged"] == round(1 - 98 / 140, 4)
    assert profile["padding_share_served"] == round(1 - 98 / 110, 4) and profile["bucketed_calls"] == 1
    assert profile["model_ms_per_text"] == round(1.4 / 6, 4)
    assert ceiling.batch_profile(ceiling.read_calls(tmp_path / "missing.csv")) == {"calls": 0}


def test_the_ceiling_replays_the_formed_batches_on_the_request_texts(tiny_export_run):
    folder = tiny_export_run / "export" / "optimized" / "int8_static"
    calls = np.array([[0, rows, 12, 10 * rows, 1, 12 * rows, 0.1, 0.5] for rows in (1, 4, 8, 4)], dtype=float)
    texts = ["a fine film", "dull", "the best thing I have seen all year", "meh, and then some more of it"]
    out = ceiling.ceiling_figures({"rps": 50.0}, calls, folder, texts, num_threads=1, max_seq_len=32,
                                  texts_per_request=2)
    assert out["batches"]["mean_texts"] == 4.25 and out["ceiling"]["calls"] == 4 and out["ceiling"]["texts"] == 17
    assert out["ceiling_rps"] == round(out["ceiling"]["texts_per_s"] / 2, 1)
    assert out["served_fraction"] == round(50.0 / out["ceiling_rps"], 3)
