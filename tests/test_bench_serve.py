"""bench/serve_overhead.py and bench/serve_stacks.py: their parsing and tables, without servers."""

from __future__ import annotations

import asyncio
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import serve_overhead as SO  # noqa: E402
import serve_stacks as SS  # noqa: E402

from bort.config import ServeConfig  # noqa: E402
from serve.app import Engine  # noqa: E402


class FakeClient:
    def __init__(self, timing: str) -> None:
        self.timing = timing

    def call(self) -> bytes:
        return b"{}"


def test_served_ms_reads_each_part_of_server_timing():
    times, parts = SO.served_ms(FakeClient("tokenize;dur=0.200, model;dur=9.500, app;dur=10.000"), 3)
    assert len(times) == 3 and parts == {"tokenize": [0.2] * 3, "model": [9.5] * 3, "app": [10.0] * 3}
    with pytest.raises(RuntimeError, match="Server-Timing"):
        SO.served_ms(FakeClient("model;dur=9.5"), 1)


def test_summary_splits_the_time_around_the_model_request_by_request():
    served = [11.0, 12.0, 13.0]
    parts = {"tokenize": [0.2, 0.2, 0.2], "model": [9.0, 10.0, 11.0], "app": [10.0, 11.0, 12.0]}
    load = {"users": 8, "requests_per_s": 100.0, "peak_rss_mb": 300.0}
    row = SO.summarise("bort", "int8", "default", [9.5] * 3, [10.0] * 3, served, 250.0, load, 1.0, [1.4, 1.6],
                       parts)
    assert row["around_model_p50_ms"] == 2.0  # 11-9, 12-10, 13-11: the model's own spread is gone
    assert row["outside_route_p50_ms"] == 1.0 and row["route_other_p50_ms"] == pytest.approx(0.8)
    assert row["in_server_model_p50_ms"] == 10.0 and row["served_over_raw"] == pytest.approx(12.0 / 9.5, abs=1e-3)
    meta = {"cpu": {"model": "cpu", "usable_cores": 2}, "client": "socket", "rounds": 1, "n": 3}
    table = SO.markdown([row], meta)
    assert "| bort | 128 tokens | int8 | default | 9.50 |" in table and "2.00 ✗" in table and "1.26 ✓" in table
    row["input"] = "task texts, median 31 tokens"
    assert "| bort | task texts, median 31 tokens | int8 |" in SO.markdown([row], {**meta, "framework": {}})


def test_the_stub_predictor_fits_the_engine():
    engine = Engine(SS.StubPredictor(), ServeConfig())
    timings: dict = {}
    results = asyncio.run(engine.classify(["a text"], timings))
    assert results[0]["label"] == "positive" and set(timings) == {"tokenize", "model"}
    engine.close()


@pytest.mark.parametrize("client_cls", [SO.SocketClient, SO.HttpClient])
def test_clients_send_their_bodies_in_turn_over_keep_alive(client_cls):
    import socketserver
    import threading

    seen: list[bytes] = []

    class Echo(socketserver.StreamRequestHandler):
        def handle(self):  # keep-alive: answer requests on one connection until it closes
            while (line := self.rfile.readline()) and line.strip():
                length = 0
                while (header := self.rfile.readline()).strip():
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                body = self.rfile.read(length)
                seen.append(body)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer-Timing: "
                                 b"model;dur=1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = client_cls("127.0.0.1", server.server_address[1], [b'{"texts": ["a"]}', b'{"texts": ["bb"]}'])
        answers = [client.call() for _ in range(3)]
        client.close()
        server.shutdown()
    assert answers == seen == [b'{"texts": ["a"]}', b'{"texts": ["bb"]}', b'{"texts": ["a"]}']
    assert client.timing.strip() == "model;dur=1.0"


def test_each_input_becomes_feeds_a_body_and_an_in_process_call():
    class Recorder:
        def __init__(self):
            self.calls = []

        def tokenize(self, texts, pairs=None):
            self.calls.append(("tokenize", texts, pairs))
            return type("Batch", (), {"feeds": {"input_ids": [[1, 2]]}})()

        def predict(self, texts=None, pairs=None):
            self.calls.append(("predict", texts, pairs))

    predictor = Recorder()
    _, body, call = SO._feeds_body(predictor, "a text")
    call()
    assert body == b'{"texts": ["a text"]}' and predictor.calls[-1] == ("predict", ["a text"], None)
    _, body, call = SO._feeds_body(predictor, ("a man eats", "someone eats"))
    call()
    assert body == b'{"pairs": [["a man eats", "someone eats"]]}'
    assert predictor.calls[-2:] == [("tokenize", [], [("a man eats", "someone eats")]),
                                    ("predict", None, [("a man eats", "someone eats")])]


def test_task_texts_come_from_the_runs_stored_test_split(tmp_path):
    from bort import config
    from bort import data as D

    rows = [{"text": f"text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(60)]
    csv = tmp_path / "task.csv"
    csv.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    cfg = config.resolve(["tiny"], [f"task.name={csv}"])
    stored = D.prepare(cfg, tmp_path / "run")
    name, inputs = SO.task_texts(tmp_path / "run", 5)
    assert name == stored.name and inputs == [e.text for e in stored.test[:5]]


def test_code_after_gap_times_every_gap_and_the_table_shows_them(tiny_export_run):
    gap = SO.code_after_gap(tiny_export_run / "export" / "optimized" / "int8", rounds=1, n=2)
    assert [g["gap_ms"] for g in gap] == list(SO.GAPS_MS)
    assert all(g["after_sleep_ms"] > 0 and g["after_busy_wait_ms"] > 0 for g in gap)
    meta = {"cpu": {"model": "cpu", "usable_cores": 2}, "client": "socket", "rounds": 1, "n": 1, "gap": gap}
    table = SO.markdown([], meta)
    assert "## The same code, slower after a gap" in table and f"| 20 | {gap[-1]['after_sleep_ms']:.3f} |" in table


def test_served_prediction_compares_each_prediction_with_locust_at_the_fewest_users():
    import served_prediction as SP

    rows = [{"role": "optimized", "predicted_p50_ms": 3.3}, {"role": "baseline", "predicted_p50_ms": 14.0}]
    loadtest = {"models": {"optimized": {"1": {"p50_ms": 3.0}, "8": {"p50_ms": 9.0}},
                           "baseline": {"8": {"p50_ms": 90.0}, "1": {"p50_ms": 17.0}}}}
    out = SP.compare(rows, loadtest)
    assert out[0]["measured_p50_ms"] == 3.0 and out[0]["error"] == 0.1 and out[0]["within_goal"]
    assert out[1]["users"] == 1 and out[1]["error"] == round((14.0 - 17.0) / 17.0, 4) and not out[1]["within_goal"]


def test_task_texts_are_cut_where_the_runs_service_cuts_them(tmp_path):
    from bort.artifacts import write_manifest
    from bort.config import resolve

    default = resolve([], []).serve
    assert SO.served_limits(tmp_path) == (default.max_seq_len, default.max_chars)  # no export: the defaults
    cfg = resolve([ROOT / "configs" / "long-texts.yaml"], [])
    write_manifest(tmp_path, "export", cfg, fingerprint="x", metrics={})
    assert SO.served_limits(tmp_path) == (256, 30000)
