"""``POST /classify`` in the service's OpenAPI schema (BentoML's ``/docs.json``).

BentoML puts into its schema only ``@bentoml.api`` methods and the routes of mounted *FastAPI*
apps; ``/classify`` is a plain Starlette route (``serve/app.py`` says why), so it is described
here and added to the schema BentoML serves by :class:`OpenAPIPaths`, a middleware that touches
``GET /docs.json`` only (every other request pays one string comparison). A FastAPI app would
have put the route in the schema by itself, at the price of FastAPI's request handling on every
request (and one more dependency in the Bento); a description needs no code on the request path.

The request and response bodies are pydantic models, built for the loaded model and settings: the
request takes ``texts`` (or ``pairs``, for a pair model) within ``serve.max_texts`` and
``serve.max_chars``, the response names the model's labels. The route itself keeps
:mod:`serve.validation`'s checks (their messages say what to send; pydantic's would not, and
its status codes would not tell a malformed body from a broken contract); a schemathesis test
against a real server holds the schema and the route together.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from bort.config import ServeConfig

REF = "#/components/schemas/{model}"
ERRORS = {  # status: (when, an example message); 404 and 405 come from the router
    "400": ("The body is not valid JSON, or not UTF-8.",
            "request body is not valid JSON (Expecting value: line 1 column 12 (char 11))"),
    "401": ("The API key is missing or wrong (X-API-Key; only when the service requires one).",
            "missing X-API-Key header: this service requires an API key"),
    "408": ("The body did not arrive within serve.read_timeout_s (a Content-Length longer than the body, "
            "or a chunked body never finished); the connection is closed.",
            "the request body did not arrive within 10 s (serve.read_timeout_s); send the whole body"),
    "413": ("The body is over serve.max_body_bytes.", "request body is 2000001 bytes; the limit is 1000000 bytes"),
    "415": ("Content-Type is not application/json.", "Content-Type must be application/json, got 'text/plain'"),
    "422": ("Valid JSON that breaks the contract: wrong field, type, count or length.",
            "missing field 'texts'; expected {\"texts\": [\"a gripping film\"]}"),
    "500": ("The model failed; the server log has the traceback.",
            "internal error while classifying; see the server log"),
    "503": ("Shed without being computed: the queue holds serve.max_queue texts, the request waited past "
            "serve.request_timeout_s, or the model is not loaded yet. Retry after Retry-After seconds.",
            "the service is at capacity: 256 texts wait for the model (serve.max_queue 256); retry in 1 s"),
}


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer: one message saying what was wrong and what to send instead."""

    model_config = ConfigDict(extra="forbid")
    error: str = Field(min_length=1)


def models(settings: ServeConfig, labels: list[str], is_pair: bool) -> tuple[type[BaseModel], type[BaseModel]]:
    """(request, response) models for a model with ``labels`` under ``settings``' limits."""
    text = Annotated[str, StringConstraints(max_length=settings.max_chars)]
    items: Any = list[Annotated[list[text], Field(min_length=2, max_length=2)]] if is_pair else list[text]
    field = "pairs" if is_pair else "texts"
    request = create_model(
        "ClassifyPairs" if is_pair else "ClassifyTexts", __config__=ConfigDict(extra="forbid"),
        **{field: (items, Field(min_length=1, max_length=settings.max_texts,
                                description="[text, text_pair] pairs" if is_pair else "texts to classify"))})
    label = Literal[tuple(labels)]  # type: ignore[valid-type]
    result = create_model(
        "Classification", __config__=ConfigDict(extra="forbid"),
        label=(label, Field(description="the most probable label")),
        score=(float, Field(ge=0, le=1, description="its probability")),
        scores=(dict[str, float], Field(description="every label's probability")),
        truncated=(bool, Field(description=f"the input was cut to {settings.max_seq_len} tokens")))
    response = create_model(
        "ClassifyResponse", __config__=ConfigDict(extra="forbid"),
        results=(list[result], Field(description="one per input, in order")),
        model=(str, Field(description="role:model:precision of the served file")),
        truncated_to_tokens=(int, Field(description="serve.max_seq_len")))
    return request, response


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def classify_path(settings: ServeConfig, labels: list[str], is_pair: bool,
                  api_key: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the ``/classify`` path item, the component schemas it refers to)."""
    components: dict[str, Any] = {}
    request, response = models(settings, labels, is_pair)
    error = _schema(ErrorBody, components)
    example = ({"pairs": [["a man is eating", "someone eats"]]} if is_pair
               else {"texts": ["a gripping film", "dull from start to finish"]})
    answer = {"results": [{"label": labels[0], "score": 0.97,
                           "scores": {name: (0.97 if i == 0 else 0.03 / (len(labels) - 1))
                                      for i, name in enumerate(labels)}, "truncated": False}],
              "model": "optimized:agora:int8", "truncated_to_tokens": settings.max_seq_len}
    json_of = "application/json"
    responses: dict[str, Any] = {"200": {
        "description": "One result per input, in order.",
        "headers": {"Server-Timing": {"description": "tokenize, model and app milliseconds",
                                      "schema": {"type": "string"}}},
        "content": {json_of: {"schema": _schema(response, components), "example": answer}}}}
    for status, (when, message) in ERRORS.items():
        if status == "401" and not api_key:
            continue
        responses[status] = {"description": when, "content": {json_of: {"schema": error,
                                                                           "example": {"error": message}}}}
    responses["503"]["headers"] = {"Retry-After": {"description": "seconds until the queue is expected to "
                                                                  "have drained", "schema": {"type": "integer"}}}
    kind = "text pairs" if is_pair else "texts"
    operation = {
        "tags": ["Service APIs"], "operationId": "classify", "summary": f"Classify {kind}",
        "description": (f"Labels for up to {settings.max_texts} {kind} of up to {settings.max_chars} "
                        f"characters (longer than {settings.max_seq_len} tokens: truncated, and the result "
                        "says so). This model takes " + ("`pairs`; a single-text model takes `texts`."
                                                         if is_pair else "`texts`; a pair model takes `pairs`.")),
        "requestBody": {"required": True, "content": {json_of: {
            "schema": _schema(request, components), "examples": {kind: {"value": example}}}}},
        "responses": responses,
    }
    if api_key:
        operation["security"] = [{"ApiKey": []}]
    return {"post": operation}, components


def merge(spec: dict[str, Any], path: dict[str, Any], schemas: dict[str, Any], api_key: bool) -> dict[str, Any]:
    """BentoML's schema with ``/classify`` added, and ``/readyz``'s 503 (not ready) documented."""
    spec.setdefault("paths", {})["/classify"] = path
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {}).update(schemas)
    if api_key:
        components.setdefault("securitySchemes", {})["ApiKey"] = {"type": "apiKey", "in": "header",
                                                                 "name": "X-API-Key"}
    readyz = spec["paths"].get("/readyz", {}).get("get")
    if readyz is not None:
        readyz["responses"]["503"] = {"description": "Not ready: the model is loading, the queue is full, or "
                                                     "a model call has run past serve.request_timeout_s.",
                                      "content": {"application/json": {"schema": {"$ref": REF.format(
                                          model="ErrorBody")}}}}
    return spec


class OpenAPIPaths:
    """ASGI middleware: ``GET /docs.json`` answers BentoML's schema with ``/classify`` added.

    ``describe()`` returns ``(path item, component schemas, api key required)``, or None while the
    model is not loaded (BentoML's schema then passes unchanged).
    """

    def __init__(self, app: Any, describe: Any) -> None:
        self.app, self.describe = app, describe

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json" or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        described = self.describe()
        if described is None:
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {"body": b""}

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                held["start"] = message
            elif message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")

        await self.app(scope, receive, capture)
        start = held["start"]
        if start["status"] == 200:
            held["body"] = json.dumps(merge(json.loads(held["body"]), *described)).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(held["body"])).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": held["body"]})
