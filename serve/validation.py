"""HTTP input checks for ``POST /classify``: every bad request becomes a 4xx with a JSON message.

Pure functions over bytes and headers, no web framework, so they are unit-testable and the
service stays thin. Status codes: 400 malformed body, 401 API key, 408 body not received in time
(``serve.app.read_body``), 413 body too large, 415 content type, 422 well-formed JSON that breaks
the contract.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from bort.config import ServeConfig

EXAMPLE_SINGLE = '{"texts": ["a gripping film"]}'
EXAMPLE_PAIR = '{"pairs": [["a man is eating", "someone eats"]]}'


class RequestError(Exception):
    """A client mistake: the HTTP status and a message saying what was wrong and what is expected."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # e.g. Connection: close, when the request's framing cannot be trusted


def check_api_key(expected: str | None, given: str | None) -> None:
    """401 unless the ``X-API-Key`` header matches (constant-time) when a key is configured."""
    if expected is None:
        return
    if not given:
        raise RequestError(401, "missing X-API-Key header: this service requires an API key")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")):
        raise RequestError(401, "wrong API key in the X-API-Key header")


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared as JSON (``application/json``, any charset parameter)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")


def check_declared_length(content_length: str | None, limit: int) -> None:
    """413 early, before reading, when ``Content-Length`` already exceeds the limit."""
    if content_length is None:
        return
    try:
        length = int(content_length)
    except ValueError as e:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from e
    if length > limit:
        raise RequestError(413, f"request body is {length} bytes; the limit is {limit} bytes")


def parse_body(body: bytes, settings: ServeConfig, is_pair: bool) -> list[Any]:
    """Decode and check a request body.

    Returns:
        The texts (single-text models) or ``(text, text_pair)`` tuples (pair models).

    Raises:
        RequestError: what was wrong, with the expected shape.
    """
    if len(body) > settings.max_body_bytes:
        raise RequestError(413, f"request body is over {settings.max_body_bytes} bytes")
    try:
        data = json.loads(body)
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"request body is not valid JSON ({str(e)[:120]})") from e
    field, other, example = ("pairs", "texts", EXAMPLE_PAIR) if is_pair else ("texts", "pairs", EXAMPLE_SINGLE)
    if not isinstance(data, dict):
        raise RequestError(422, f"expected a JSON object like {example}, got a JSON {_json_type(data)}")
    if other in data and field not in data:
        kind = "text pairs" if is_pair else "single texts"
        raise RequestError(422, f"this model classifies {kind}: send {example}")
    extra = sorted(set(data) - {field})
    if extra:
        raise RequestError(422, f"unexpected field(s) {', '.join(map(repr, extra))}; expected only {example}")
    if field not in data:
        raise RequestError(422, f"missing field {field!r}; expected {example}")
    items = data[field]
    if not isinstance(items, list):
        raise RequestError(422, f"{field!r} must be a list, got {_json_type(items)}; expected {example}")
    if not items:
        raise RequestError(422, f"{field!r} is empty; send at least one")
    if len(items) > settings.max_texts:
        raise RequestError(422, f"{len(items)} {field} in one request; the limit is {settings.max_texts}")
    if is_pair:
        return [_check_pair(item, f"pairs[{i}]", settings.max_chars) for i, item in enumerate(items)]
    return [_check_text(item, f"texts[{i}]", settings.max_chars) for i, item in enumerate(items)]


def _check_pair(item: Any, where: str, max_chars: int) -> tuple[str, str]:
    if not isinstance(item, list) or len(item) != 2:
        raise RequestError(422, f"{where} must be a list of two strings [text, text_pair]")
    return _check_text(item[0], f"{where}[0]", max_chars), _check_text(item[1], f"{where}[1]", max_chars)


def _check_text(item: Any, where: str, max_chars: int) -> str:
    if not isinstance(item, str):
        raise RequestError(422, f"{where} is {_json_type(item)}; expected a string")
    if len(item) > max_chars:
        raise RequestError(422, f"{where} has {len(item)} characters; the limit is {max_chars}")
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as e:
        # JSON allows "\ud800" escapes that decode to lone surrogates: not text a tokenizer can read.
        raise RequestError(422, f"{where} holds invalid Unicode (a lone surrogate at character {e.start})") from e
    return item


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)
