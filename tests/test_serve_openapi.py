"""/classify in the service's OpenAPI schema, and schemathesis against a real server on 127.0.0.1."""

from __future__ import annotations

import http.client
import json

import pytest
from hypothesis import HealthCheck, given, settings

from bort import config
from bort.config import ServeConfig
from serve.openapi import ERRORS, classify_path
from serve.server import ServerProcess, deployed_folder

API_KEY = "openapi-test-key"
SETTINGS = ["serve.max_texts=4", "serve.max_chars=200", "serve.max_body_bytes=2000", "serve.max_queue=16",
            "serve.api_key_env=BORT_OPENAPI_TEST_KEY", "serve.num_threads=1", "serve.max_seq_len=32",
            "serve.port=0"]


@pytest.fixture(scope="module")
def server(tiny_export_run, tmp_path_factory):
    cfg = config.resolve(["tiny"], SETTINGS)
    log = tmp_path_factory.mktemp("openapi") / "server.log"
    with ServerProcess(deployed_folder(tiny_export_run, "optimized"), cfg.serve, log_path=log,
                       env={"BORT_OPENAPI_TEST_KEY": API_KEY}) as running:
        yield running


@pytest.fixture(scope="module")
def spec(server) -> dict:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/docs.json")
    resp = conn.getresponse()
    assert resp.status == 200
    return json.loads(resp.read())


def resolve(spec: dict, node: dict) -> dict:
    return spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node


def test_classify_is_in_the_schema_with_bodies_errors_and_examples(spec):
    post = spec["paths"]["/classify"]["post"]
    body = post["requestBody"]["content"]["application/json"]
    request = resolve(spec, body["schema"])
    assert request["required"] == ["texts"] and request["additionalProperties"] is False
    texts = request["properties"]["texts"]
    assert texts["maxItems"] == 4 and texts["minItems"] == 1 and texts["items"]["maxLength"] == 200
    assert body["examples"]["texts"]["value"]["texts"]
    ok = post["responses"]["200"]["content"]["application/json"]
    result = resolve(spec, resolve(spec, ok["schema"])["properties"]["results"]["items"])
    assert result["properties"]["label"]["enum"] == ["fresh", "rotten"] and ok["example"]["results"]
    for status in ERRORS:
        error = post["responses"][status]["content"]["application/json"]
        assert resolve(spec, error["schema"])["required"] == ["error"] and error["example"]["error"]
    assert "Retry-After" in post["responses"]["503"]["headers"]
    assert post["security"] == [{"ApiKey": []}]
    assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_a_pair_model_is_described_with_pairs():
    path, schemas = classify_path(ServeConfig(max_texts=3), ["entailment", "neutral"], True, api_key=False)
    pairs = schemas["ClassifyPairs"]["properties"]["pairs"]
    assert pairs["maxItems"] == 3 and pairs["items"]["minItems"] == pairs["items"]["maxItems"] == 2
    post = path["post"]
    assert post["requestBody"]["content"]["application/json"]["examples"]["text pairs"]["value"]["pairs"]
    assert "401" not in post["responses"] and "security" not in post


def statuses_for(operation, mode) -> list[int]:
    """Statuses of the requests schemathesis generated for one operation, each checked by its default
    checks: no 5xx, a documented status, content type and headers, a body that fits the schema."""
    calls: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        calls.append(case.call_and_validate(headers={"X-API-Key": API_KEY}, timeout=30).status_code)

    check()
    return calls


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_schema(server):
    import schemathesis
    from schemathesis import GenerationMode

    # An over-long text in a body over serve.max_body_bytes is refused with 413 before it is parsed:
    # a rejection too, which schemathesis's negative-data check does not list by default.
    rejected = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejected}}})
    schema = schemathesis.openapi.from_url(f"{server.url}/docs.json", config=config)
    ran = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.path == "/classify" else [])
        for mode in modes:  # the GET endpoints take no input: nothing to make invalid
            ran[f"{operation.method.upper()} {operation.path} {mode.value}"] = statuses_for(operation, mode)
    classify = ran["POST /classify positive"] + ran["POST /classify negative"]
    assert 200 in classify and any(400 <= status < 500 for status in classify), ran
    assert all(status < 500 for calls in ran.values() for status in calls)
