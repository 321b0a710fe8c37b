"""The service over real HTTP: one server process on 127.0.0.1 per module, stopped by process group."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from bort.processes import alive, descendants, free_port
from serve.predictor import Predictor
from serve.server import deployed_folder

API_KEY = "test-key-123"
LIMITS = ["serve.batching=always", "serve.max_texts=4", "serve.max_chars=200", "serve.max_body_bytes=2000",
          "serve.api_key_env=BORT_TEST_API_KEY", "serve.num_threads=1", "serve.max_seq_len=32"]
TEXTS = ["a gripping, beautifully acted film", "dull and lifeless from start to finish"]


@pytest.fixture(scope="module")
def folder(tiny_export_run):
    return deployed_folder(tiny_export_run, "optimized")


@pytest.fixture(scope="module")
def server(tiny_export_run, tmp_path_factory):
    """`bort serve` as a user runs it; SIGTERM at the end must take every server process with it."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--profile", "tiny", "--run-dir", str(tiny_export_run),
           "--port", str(port), *(f"--set={item}" for item in LIMITS)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
                                env={**os.environ, "BORT_TEST_API_KEY": API_KEY})
    pids: set[int] = set()
    try:
        line = proc.stdout.readline()  # printed once /readyz answers
        assert f"http://127.0.0.1:{port}" in line, log_path.read_text()[-3000:]
        pids = descendants(proc.pid)
        assert len(pids) >= 2, "expected BentoML's server process and its worker"
        yield SimpleNamespace(host="127.0.0.1", port=port)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pids), "a server process outlived `bort serve`"
    finally:
        for pid in alive(pids | {proc.pid}):
            os.kill(pid, signal.SIGKILL)


def request(server, method="POST", path="/classify", body=b"", headers=None):
    """One request on a fresh connection; returns (status, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        base = {"Content-Type": "application/json", "X-API-Key": API_KEY}
        conn.request(method, path, body, {**base, **(headers or {})})
        resp = conn.getresponse()
        data = resp.read()
        is_json = "json" in (resp.getheader("Content-Type") or "")
        return resp.status, json.loads(data) if is_json else data
    finally:
        conn.close()


def classify(server, texts):
    return request(server, body=json.dumps({"texts": texts}).encode())


def test_good_request_answers_the_same_labels_as_the_predictor(server, folder):
    status, data = classify(server, TEXTS)
    assert status == 200, data
    expected = Predictor(folder, num_threads=1, max_seq_len=32).predict(texts=TEXTS)
    assert [r["label"] for r in data["results"]] == [r["label"] for r in expected]
    for got, want in zip(data["results"], expected, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)
    assert data["model"] == f"optimized:agora:{folder.name}"
    assert data["truncated_to_tokens"] == 32


def test_answer_carries_server_timing(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("POST", "/classify", json.dumps({"texts": TEXTS}),
                     {"Content-Type": "application/json", "X-API-Key": API_KEY})
        resp = conn.getresponse()
        resp.read()
        header = resp.getheader("Server-Timing") or ""
    finally:
        conn.close()
    parts = dict(item.strip().split(";dur=") for item in header.split(","))
    assert set(parts) == {"tokenize", "model", "app"}, header
    ms = {k: float(v) for k, v in parts.items()}
    assert 0 < ms["tokenize"] and 0 < ms["model"] and ms["tokenize"] + ms["model"] <= ms["app"], header


BAD_REQUESTS = {
    "empty list": ({"body": b'{"texts": []}'}, 422),
    "a non-string": ({"body": b'{"texts": [42]}'}, 422),
    "null": ({"body": b'{"texts": null}'}, 422),
    "null item": ({"body": b'{"texts": [null]}'}, 422),
    "over-long text": ({"body": json.dumps({"texts": ["x" * 201]}).encode()}, 422),
    "too many texts": ({"body": json.dumps({"texts": ["a"] * 5}).encode()}, 422),
    "wrong content type": ({"body": b'{"texts": ["a"]}', "headers": {"Content-Type": "text/plain"}}, 415),
    "no content type": ({"body": b'{"texts": ["a"]}', "headers": {"Content-Type": ""}}, 415),
    "malformed JSON": ({"body": b'{"texts": ["a",'}, 400),
    "invalid UTF-8": ({"body": b'{"texts": ["\xc3\x28"]}'}, 400),
    "missing field": ({"body": b'{"text": ["a"]}'}, 422),
    "extra field": ({"body": b'{"texts": ["a"], "debug": true}'}, 422),
    "not an object": ({"body": b'"a"'}, 422),
    "lone surrogate": ({"body": b'{"texts": ["ok \\ud800 there"]}'}, 422),
    "wrong API key": ({"body": b'{"texts": ["a"]}', "headers": {"X-API-Key": "nope"}}, 401),
    "missing API key": ({"body": b'{"texts": ["a"]}', "headers": {"X-API-Key": ""}}, 401),
    "body over the limit": ({"body": json.dumps({"texts": ["x" * 150] * 20}).encode()}, 413),
    "wrong method": ({"method": "GET", "body": None}, 405),
    "unknown path": ({"path": "/classify/v2", "body": b'{"texts": ["a"]}'}, 404),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_a_4xx_with_a_json_message(server, case):
    kwargs, expected = BAD_REQUESTS[case]
    status, data = request(server, **kwargs)
    assert status == expected, data
    assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]


def test_chunked_body_over_the_limit_is_refused(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    chunks = iter([b'{"texts": ["', b"x" * 1500, b"y" * 1500, b'"]}'])
    conn.request("POST", "/classify", chunks, {"Content-Type": "application/json", "X-API-Key": API_KEY},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    conn.close()


def test_good_request_still_answered_after_bad_ones(server):
    for kwargs, _ in BAD_REQUESTS.values():
        request(server, **kwargs)
    status, data = classify(server, TEXTS[::-1])
    assert status == 200 and len(data["results"]) == 2


def test_long_text_is_truncated_and_says_so(server):
    status, data = classify(server, ["good " * 39])  # 195 characters, 41 tokens > 32
    assert status == 200 and data["results"][0]["truncated"] is True


def test_health_readiness_and_metrics(server):
    assert request(server, "GET", "/healthz", None)[0] == 200
    assert request(server, "GET", "/readyz", None)[0] == 200
    status, text = request(server, "GET", "/metrics", None)
    assert status == 200 and b'endpoint="/classify"' in text and b"request_duration_seconds" in text


def test_concurrent_requests_are_each_answered_in_order(server):
    from concurrent.futures import ThreadPoolExecutor

    batches = [[f"text {i} {j}" for j in range(1 + i % 3)] for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda texts: classify(server, texts), batches))
    for texts, (status, data) in zip(batches, answers, strict=True):
        assert status == 200 and len(data["results"]) == len(texts)

