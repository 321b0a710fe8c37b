"""serve.predictor and serve.validation: inference over an exported folder, request checks."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from bort.config import ServeConfig
from serve.predictor import ModelFolderError, Predictor, session_options, softmax
from serve.validation import RequestError, ServiceSettings, check_api_key, check_content_type, parse_body


@pytest.fixture(scope="module")
def predictor(tiny_export_run) -> Predictor:
    return Predictor(tiny_export_run / "export" / "optimized" / "fp32", num_threads=1, max_seq_len=16)


def test_serving_modules_import_neither_torch_nor_bentoml():
    code = ("import sys, serve.predictor, serve.validation; "
            "bad = [m for m in ('torch', 'bentoml', 'transformers') if m in sys.modules]; "
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


def test_empty_input_gives_no_results(predictor):
    assert predictor.predict(texts=[]) == []


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_incomplete_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFolderError, match="missing model.onnx"):
        Predictor(tmp_path)


def test_service_settings_defaults_mirror_serve_config():
    config_defaults = dataclasses.asdict(ServeConfig())
    for field in dataclasses.fields(ServiceSettings):
        assert getattr(ServiceSettings(), field.name) == config_defaults[field.name], field.name
    settings = ServiceSettings.from_json(json.dumps({**config_defaults, "max_texts": 3}))
    assert settings.max_texts == 3


SETTINGS = ServiceSettings(max_texts=3, max_chars=10, max_body_bytes=200)


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
        parse_body(body, SETTINGS if len(body) < 200 else ServiceSettings(), is_pair=False)
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

    def predict(self, texts=None, pairs=None):
        import time

        self.calls.append(len(texts))
        time.sleep(0.05)  # long enough for the other requests to queue behind the first
        return [{"label": t} for t in texts]


def _classify_concurrently(engine, batches):
    import asyncio

    async def run():
        return await asyncio.gather(*(engine.classify(b) for b in batches))

    return asyncio.run(run())


def test_engine_merges_waiting_requests_and_routes_answers_back():
    from serve.app import Engine

    predictor = RecordingPredictor("fp32")
    engine = Engine(predictor, ServiceSettings(batching="auto", max_batch_texts=4))
    batches = [["r0"], ["r1a", "r1b"], ["r2"], ["r3a", "r3b"]]
    answers = _classify_concurrently(engine, batches)
    assert [[r["label"] for r in a] for a in answers] == batches  # each request gets its own answers
    assert predictor.calls == [4, 2]  # all four wait for the first call: as many as fit in 4 texts, then the rest
    engine.close()


def test_engine_does_not_merge_requests_for_int8_models_by_default():
    from serve.app import Engine

    predictor = RecordingPredictor("int8")
    engine = Engine(predictor, ServiceSettings(batching="auto"))
    _classify_concurrently(engine, [["a"], ["b"], ["c"]])
    assert predictor.calls == [1, 1, 1] and engine.batching is False
    engine.close()
