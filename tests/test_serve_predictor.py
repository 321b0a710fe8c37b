"""serve.predictor and serve.validation: inference over an exported folder, request checks."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from bort.config import ServeConfig
from runtime.session import session_options
from serve.predictor import ModelFolderError, Predictor, softmax
from serve.validation import RequestError, check_api_key, check_content_type, parse_body


@pytest.fixture(scope="module")
def predictor(tiny_export_run) -> Predictor:
    return Predictor(tiny_export_run / "export" / "optimized" / "fp32", num_threads=1, max_seq_len=16)


def test_serving_modules_import_neither_torch_nor_bentoml():
    code = ("import sys, serve.predictor, serve.validation, runtime.session; "
            "bad = [m for m in ('torch', 'bentoml', 'transformers', 'optimum') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_session_options_carry_the_spin_settings(tiny_export_run):
    opts = session_options(2, spin=True, spin_stop=True)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    assert session_options(2, spin=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception, match="force_spinning_stop"):  # not set unless asked for
        session_options(2).get_session_config_entry("session.force_spinning_stop")
    folder = tiny_export_run / "export" / "optimized" / "fp32"
    stopping = Predictor(folder, num_threads=2, max_seq_len=16, spin_stop=True)
    plain = Predictor(folder, num_threads=2, max_seq_len=16)
    assert stopping.predict(texts=["a fine film"]) == plain.predict(texts=["a fine film"])


def test_predict_returns_label_score_and_all_class_scores(predictor):
    results = predictor.predict(texts=["a fine film", "a bad one"])
    assert len(results) == 2
    for r in results:
        assert r["label"] in ("fresh", "rotten")
        assert set(r["scores"]) == {"fresh", "rotten"}
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["score"] == max(r["scores"].values())
        assert r["truncated"] is False


def test_long_text_is_truncated_and_flagged(predictor):
    short, long = predictor.predict(texts=["short", "word " * 50])
    assert short["truncated"] is False and long["truncated"] is True
    batch = predictor.tokenize(["word " * 50])
    assert batch.feeds["input_ids"].shape == (1, 16)


def test_batch_pads_to_the_longest_text_not_a_fixed_length(predictor):
    batch = predictor.tokenize(["one", "one two three"])
    assert batch.feeds["input_ids"].shape == (2, 5)  # [CLS] one two three [SEP]
    assert batch.feeds["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]


def test_batched_and_single_predictions_agree(predictor):
    texts = ["one", "one two three four five", "six"]
    together = predictor.predict(texts=texts)
    alone = [predictor.predict(texts=[t])[0] for t in texts]
    for a, b in zip(together, alone, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def _reference_rows(folder, texts, max_len):
    """Ids and truncation flags from the saved tokenizer itself: full normaliser, no cut."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.no_padding()
    return [(e.ids, bool(e.overflowing)) for e in (tokenizer.encode(t) for t in texts)]


def _rows(batch):
    ids, mask = batch.feeds["input_ids"], batch.feeds["attention_mask"]
    return [(row[m == 1].tolist(), t) for row, m, t in zip(ids, mask, batch.truncated, strict=True)]


@pytest.mark.parametrize("max_len", [16, 128])
def test_fast_tokenisation_paths_give_the_saved_tokenizers_ids(tiny_export_run, max_len):
    """ASCII skips the Unicode normaliser, long texts are cut at a space first: neither may
    change a single id or truncation flag, on ASCII, Unicode, control characters and long texts."""
    import random

    folder = tiny_export_run / "export" / "optimized" / "fp32"
    fast = Predictor(folder, num_threads=1, max_seq_len=max_len)
    assert fast._ascii_tokenizer is not None and fast._cut_chars == 6 * max_len  # both paths on
    rng = random.Random(0)
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 4
                + list(" " * 40 + ".,;:!?'\"()-_/&%$#@[]{}<>|~`^*+=\t\n\r")
                + ["\x0b", "\x0c", "\x01", "\x7f", "\x00", "é", "\u0301", "中", "文", "\u00a0", "\u200b",
                   "İ", "ß", "😀", "\ue000", "Ω", "\u3000", "\ufffd"])
    words = ["film", "the", "unbelievably", "Internationalization", "don't", "café", "e-mail", "[CLS]", "[SEP]",
             "[MASK]", "x" * 101, "\ue000" * 30]
    texts = []
    for _ in range(300):
        n = rng.choice([3, 20, 200, 1200])
        if rng.random() < 0.5:
            texts.append("".join(rng.choice(alphabet) for _ in range(n)))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(n // 6 + 1)))
    texts += ["plain ascii " * 200, "Plain\tASCII\nwith\rbreaks " * 100, "x" * 101, " " * 50 + "word " * 300,
              " ".join(["\ue000" * 30] * 40),  # 30 characters a token: the cut falls short, the whole text is used
              ""]
    got = _rows(fast.tokenize(texts)) + [_rows(fast.tokenize([t]))[0] for t in texts[:50]]
    want = _reference_rows(folder, texts, max_len) + _reference_rows(folder, texts[:50], max_len)
    mismatches = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    assert not mismatches, [(repr(texts[i % len(texts)][:80]), got[i], want[i]) for i in mismatches[:3]]
    assert any(t for _, t in want) and not all(t for _, t in want)  # both truncated and whole rows were checked


def test_predict_reports_tokenise_and_model_milliseconds(predictor):
    timings: dict = {}
    predictor.predict(texts=["a fine film"], timings=timings)
    assert set(timings) == {"tokenize", "model"} and all(0 < ms < 10_000 for ms in timings.values())


def test_empty_input_gives_no_results(predictor):
    assert predictor.predict(texts=[]) == []


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_incomplete_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFolderError, match="missing model.onnx"):
        Predictor(tmp_path)


def test_the_service_reads_its_settings_with_the_run_config_schema():
    from bort import config as C
    from bort.errors import ConfigError

    resolved = C.resolve(["tiny"], ["serve.max_texts=3"]).serve
    assert ServeConfig.from_json(resolved.model_dump_json()) == resolved
    assert ServeConfig.from_json(None) == ServeConfig()
    for bad, key in (({"max_texts": "3"}, "serve.max_texts: expected an integer"),
                     ({"max_textz": 3}, "unknown config key 'serve.max_textz'"),
                     ({"batching": "sometimes"}, "serve.batching must be")):
        with pytest.raises(ConfigError, match=re.escape(key)) as e:
            ServeConfig.from_json(json.dumps(bad))
        assert "\n" not in str(e.value)


SETTINGS = ServeConfig(max_texts=3, max_chars=10, max_body_bytes=200)


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b'{"texts": []}', 422, "is empty"),
    (b'{"texts": [1]}', 422, "texts[0] is number"),
    (b'{"texts": null}', 422, "must be a list, got null"),
    (b'{"texts": ["ok", null]}', 422, "texts[1] is null"),
    (b'{"texts": ["01234567890"]}', 422, "11 characters"),
    (b'{"texts": ["a", "b", "c", "d"]}', 422, "limit is 3"),
    (b'{"texts": ["a"', 400, "not valid JSON"),
    (b'{"texts": ["\xff"]}', 400, "not valid UTF-8"),
    (b'{}', 422, "missing field 'texts'"),
    (b'{"texts": ["a"], "mode": 1}', 422, "unexpected field(s) 'mode'"),
    (b'["a"]', 422, "expected a JSON object"),
    (b'{"texts": ["\\ud800"]}', 422, "lone surrogate"),
    (b'{"pairs": [["a", "b"]]}', 422, "classifies single texts"),
    (b'[' * 5000 + b']' * 5000, 400, "not valid JSON"),
])
def test_bad_bodies_are_client_errors_with_a_message(body, status, fragment):
    with pytest.raises(RequestError) as info:
        parse_body(body, SETTINGS if len(body) < 200 else ServeConfig(), is_pair=False)
    assert info.value.status == status
    assert fragment in info.value.message


def test_pairs_are_parsed_for_pair_models():
    assert parse_body(b'{"pairs": [["a", "b"]]}', SETTINGS, is_pair=True) == [("a", "b")]
    with pytest.raises(RequestError, match="two strings"):
        parse_body(b'{"pairs": [["a"]]}', SETTINGS, is_pair=True)
    with pytest.raises(RequestError, match="classifies text pairs"):
        parse_body(b'{"texts": ["a"]}', SETTINGS, is_pair=True)


def test_api_key_and_content_type_checks():
    check_api_key(None, None)
    check_api_key("k", "k")
    for given in (None, "", "wrong"):
        with pytest.raises(RequestError) as info:
            check_api_key("k", given)
        assert info.value.status == 401
    check_content_type("application/json; charset=utf-8")
    with pytest.raises(RequestError, match="must be application/json"):
        check_content_type("text/plain")


class RecordingPredictor:
    """Stands in for Predictor: records each model call's size, answers with the input text."""

    is_pair, labels = False, ["a", "b"]

    def __init__(self, precision: str = "fp32") -> None:
        self.serving = {"precision": precision}
        self.calls: list[int] = []
        self.threads: list[str] = []

    def predict(self, texts=None, pairs=None, timings=None):
        import threading
        import time

        self.calls.append(len(texts))
        self.threads.append(threading.current_thread().name)
        time.sleep(0.05)  # long enough for the other requests to queue behind the first
        if timings is not None:
            timings["model"] = float(len(self.calls))  # which call answered
        return [{"label": t} for t in texts]


def _classify_concurrently(engine, batches, timings=None):
    import asyncio

    timings = timings or [None] * len(batches)

    async def run():
        return await asyncio.gather(*(engine.classify(b, t) for b, t in zip(batches, timings, strict=True)))

    return asyncio.run(run())


def test_engine_merges_waiting_requests_and_routes_answers_back():
    from serve.app import Engine

    predictor = RecordingPredictor("fp32")
    engine = Engine(predictor, ServeConfig(batching="auto", max_batch_texts=4))
    batches = [["r0"], ["r1a", "r1b"], ["r2"], ["r3a", "r3b"]]
    timings = [{} for _ in batches]
    answers = _classify_concurrently(engine, batches, timings)
    assert [[r["label"] for r in a] for a in answers] == batches  # each request gets its own answers
    assert predictor.calls == [4, 2]  # all four wait for the first call: as many as fit in 4 texts, then the rest
    assert [t["model"] for t in timings] == [1.0, 1.0, 1.0, 2.0]  # each request: the timings of its own call
    engine.close()


def test_engine_does_not_merge_requests_for_int8_models_by_default():
    from serve.app import Engine

    predictor = RecordingPredictor("int8")
    engine = Engine(predictor, ServeConfig(batching="auto"))
    _classify_concurrently(engine, [["a"], ["b"], ["c"]])
    assert predictor.calls == [1, 1, 1] and engine.batching is False
    engine.close()


@pytest.mark.parametrize(("inline_max_texts", "where"), [(1, ["loop", "model", "model"]), (0, ["model"] * 3)])
def test_small_unmerged_calls_run_on_the_loop_and_never_beside_a_running_call(inline_max_texts, where):
    import asyncio
    import threading

    from serve.app import Engine

    predictor = RecordingPredictor("int8")
    engine = Engine(predictor, ServeConfig(batching="auto", inline_max_texts=inline_max_texts))

    async def run():
        await engine.classify(["one"])  # alone: inline
        await engine.classify(["two", "texts"])  # over the limit: the model thread
        big = asyncio.ensure_future(engine.classify(["a", "b"]))
        await asyncio.sleep(0.01)  # the big call is now running in the model thread...
        await engine.classify(["small"])  # ...so this one queues behind it there, not beside it
        await big
        return threading.current_thread().name

    loop_thread = asyncio.run(run())
    seen = ["loop" if name == loop_thread else "model" for name in predictor.threads]
    assert seen[:2] == where[:2] and seen[2:] == ["model", "model"] and predictor.calls == [1, 2, 2, 1]
    engine.close()


def test_a_lone_small_merged_request_runs_on_the_loop_and_company_still_merges():
    import asyncio
    import threading

    from serve.app import Engine

    predictor = RecordingPredictor("fp32")
    engine = Engine(predictor, ServeConfig(batching="auto", max_batch_texts=8))

    async def run():
        await engine.classify(["alone"])  # nobody else: on the loop, no hand-off
        together = await asyncio.gather(*(engine.classify([t]) for t in ("x", "y", "z")))  # arrive together
        big = asyncio.ensure_future(engine.classify(["a", "b"]))
        await asyncio.sleep(0.01)  # the big call is running in the model thread...
        late = await engine.classify(["late"])  # ...so a lone small one waits for the next call there
        await big
        return threading.current_thread().name, together, late

    loop_thread, together, late = asyncio.run(run())
    seen = ["loop" if name == loop_thread else "model" for name in predictor.threads]
    assert predictor.calls == [1, 3, 2, 1] and seen == ["loop", "model", "model", "model"]
    assert [a[0]["label"] for a in together] == ["x", "y", "z"] and late[0]["label"] == "late"
    engine.close()


def test_a_request_cancelled_during_its_one_turn_wait_leaves_nothing_queued():
    import asyncio

    from serve.app import Engine

    predictor = RecordingPredictor("fp32")
    engine = Engine(predictor, ServeConfig(batching="auto"))

    async def run():
        task = asyncio.ensure_future(engine.classify(["gone"]))
        await asyncio.sleep(0)  # the request is now in its one-turn wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(engine._pending), await engine.classify(["next"])

    pending, answer = asyncio.run(run())
    assert pending == 0 and predictor.calls == [1] and answer[0]["label"] == "next"
    engine.close()


def test_auto_batching_merges_static_int8_and_never_dynamic_int8():
    from serve.app import Engine
    from serve.predictor import batch_invariant

    static = RecordingPredictor("int8_static")
    static.serving["quantization"] = "static"
    engine = Engine(static, ServeConfig(batching="auto", max_batch_texts=4))
    _classify_concurrently(engine, [["a"], ["b"], ["c"]])
    assert engine.batching is True and sum(static.calls) == 3 and len(static.calls) < 3
    engine.close()
    assert not batch_invariant({"precision": "int8"})  # folders from before static int8: dynamic
    assert not batch_invariant({"precision": "int8", "quantization": "dynamic"})
    assert batch_invariant({"precision": "fp32"})


def test_every_model_call_appends_its_batch_and_padding_to_the_call_log(tiny_export_run, tmp_path):
    log_path = tmp_path / "calls.csv"
    predictor = Predictor(tiny_export_run / "export" / "optimized" / "fp32", num_threads=1, max_seq_len=64,
                          call_log=log_path)
    predictor.predict(texts=["short", "a much longer text " * 6, "tiny"])
    predictor.predict(texts=["one"])
    lines = [line.split(",") for line in log_path.read_text().splitlines()]
    assert [int(x[1]) for x in lines] == [3, 1]  # texts per call
    rows, width, tokens, calls, padded = (int(x) for x in lines[0][1:6])
    assert width > tokens / rows and calls == 2 and tokens <= padded < rows * width  # bucketed: less padding
