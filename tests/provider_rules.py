"""What real providers refuse, as the stand-in server enforces it.

Written from the providers' published rules, not from our request code, so a change
to what we send that a provider would refuse fails the tests with the provider's own
kind of answer (HTTP 400 and its error shape).

OpenAI chat completions, structured outputs with `strict: true`:
- the root schema is an object (not anyOf); every object sets
  `additionalProperties: false` and lists every property in `required`;
- keywords allowed: strings `pattern`, `format`; numbers `multipleOf`, `minimum`,
  `maximum`, `exclusiveMinimum`, `exclusiveMaximum`; arrays `items`, `minItems`,
  `maxItems`; objects `properties`, `required`, `additionalProperties`; any schema
  `type`, `enum`, `const`, `anyOf`, `description`, `title`, `$ref`, `$defs`;
  anything else (`maxLength`, `minLength`, `uniqueItems`, `default`, ...) is refused;
- at most 5,000 object properties, 10 levels of nesting, 1,000 enum values in all,
  and 15,000 characters of enum values in one enum of more than 250 values;
- the `json_schema.name` matches ^[A-Za-z0-9_-]{1,64}$.
Parameters: reasoning models (o1, o3, o4-mini, gpt-5 families) refuse `max_tokens`
("use max_completion_tokens") and any `temperature` but 1; `temperature` is 0..2;
unknown top-level parameters are refused.

Anthropic messages: `model`, `max_tokens` (≥ 1) and `messages` are required; the
`anthropic-version` header is required; `temperature` is 0..1; a tool has a name
matching ^[a-zA-Z0-9_-]{1,64}$ and an `input_schema` of type object; a forced
`tool_choice` names a declared tool; the first message is from the user.
"""

from __future__ import annotations

import re
from typing import Any

STRICT_KEYWORDS = {
    "common": {"type", "enum", "const", "anyOf", "description", "title", "$ref", "$defs"},
    "string": {"pattern", "format"},
    "number": {"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "integer": {"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "array": {"items", "minItems", "maxItems"},
    "object": {"properties", "required", "additionalProperties"},
    "boolean": set(),
    "null": set(),
}
MAX_PROPERTIES, MAX_DEPTH, MAX_ENUM_VALUES = 5000, 10, 1000
BIG_ENUM, BIG_ENUM_CHARS = 250, 15_000
REASONING = re.compile(r"^(o1|o3|o4|gpt-5)")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OPENAI_PARAMS = {
    "model", "messages", "response_format", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options", "tools",
    "tool_choice", "parallel_tool_calls", "user", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "reasoning_effort", "metadata",
    "store", "service_tier", "modalities", "prediction", "audio", "verbosity",
}  # fmt: skip


class Refusal(Exception):
    """A request the provider would refuse: (param, message, code)."""

    def __init__(self, param: str | None, message: str, code: str) -> None:
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


def openai_error(refusal: Refusal) -> dict[str, Any]:
    return {
        "error": {
            "message": refusal.message,
            "type": "invalid_request_error",
            "param": refusal.param,
            "code": refusal.code,
        }
    }


def anthropic_error(refusal: Refusal) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": refusal.message}}


def check_openai(body: dict[str, Any]) -> None:
    """Raise Refusal for what OpenAI's chat completions endpoint answers with 400."""
    for key in body:
        if key not in OPENAI_PARAMS:
            raise Refusal(key, f"Unrecognized request argument supplied: {key}", "unknown_param")
    model = str(body.get("model", ""))
    if REASONING.match(model):
        if "max_tokens" in body:
            raise Refusal(
                "max_tokens",
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "unsupported_parameter",
            )
        if "temperature" in body and body["temperature"] != 1:
            raise Refusal(
                "temperature",
                f"Unsupported value: 'temperature' does not support {body['temperature']} "
                "with this model. Only the default (1) value is supported.",
                "unsupported_value",
            )
    temperature = body.get("temperature", 1)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise Refusal("temperature", "temperature must be between 0 and 2", "invalid_value")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        name = str(spec.get("name", ""))
        if not NAME.match(name):
            raise Refusal("response_format.json_schema.name", "invalid name", "invalid_value")
        if spec.get("strict"):
            check_strict_schema(spec.get("schema"), name)


def check_strict_schema(schema: Any, name: str = "schema") -> None:
    """OpenAI's strict-mode subset of JSON Schema."""

    def refuse(path: tuple[str, ...], what: str) -> Refusal:
        return Refusal(
            "response_format",
            f"Invalid schema for response_format '{name}': In context={path}, {what}.",
            "invalid_json_schema",
        )

    if not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema:
        raise refuse((), "schema must be a JSON Schema of 'type: \"object\"', got another type")
    totals = {"properties": 0, "enum_values": 0}

    def walk(node: Any, path: tuple[str, ...], depth: int) -> None:
        if not isinstance(node, dict):
            raise refuse(path, "schema must be an object")
        if depth > MAX_DEPTH:
            raise refuse(path, f"nesting is deeper than {MAX_DEPTH} levels")
        for key, sub in node.get("$defs", {}).items():
            walk(sub, (*path, "$defs", key), depth)
        if "$ref" in node:
            return
        types = node.get("type")
        types = types if isinstance(types, list) else [types] if types else []
        allowed = set(STRICT_KEYWORDS["common"])
        for t in types:
            if t not in STRICT_KEYWORDS:
                raise refuse(path, f"type '{t}' is not supported")
            allowed |= STRICT_KEYWORDS[t]
        for key in node:
            if key not in allowed:
                raise refuse(path, f"'{key}' is not permitted")
        if "enum" in node:
            values = node["enum"]
            totals["enum_values"] += len(values)
            if len(values) > BIG_ENUM and sum(len(str(v)) for v in values) > BIG_ENUM_CHARS:
                raise refuse(path, f"an enum of more than {BIG_ENUM} values is too long")
        if "object" in types:
            props = node.get("properties", {})
            totals["properties"] += len(props)
            if node.get("additionalProperties") is not False:
                raise refuse(path, "'additionalProperties' is required to be supplied and false")
            missing = sorted(set(props) - set(node.get("required", [])))
            if missing:
                raise refuse(
                    path, f"'required' is required to include every key; missing {missing[0]!r}"
                )
            for key, sub in props.items():
                walk(sub, (*path, "properties", key), depth + 1)
        if "array" in types and "items" in node:
            walk(node["items"], (*path, "items"), depth + 1)
        for i, sub in enumerate(node.get("anyOf", [])):
            walk(sub, (*path, "anyOf", str(i)), depth + 1)

    walk(schema, (), 1)
    if totals["properties"] > MAX_PROPERTIES:
        raise refuse((), f"more than {MAX_PROPERTIES} object properties")
    if totals["enum_values"] > MAX_ENUM_VALUES:
        raise refuse((), f"more than {MAX_ENUM_VALUES} enum values in all")


def check_anthropic(body: dict[str, Any], headers: dict[str, str]) -> None:
    """Raise Refusal for what Anthropic's messages endpoint answers with 400."""
    if not any(k.lower() == "anthropic-version" for k in headers):
        raise Refusal(None, "anthropic-version: header is required", "invalid_request_error")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise Refusal(key, f"{key}: Field required", "invalid_request_error")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Refusal("max_tokens", "max_tokens: must be at least 1", "invalid_request_error")
    if "max_completion_tokens" in body:
        raise Refusal(
            "max_completion_tokens",
            "max_completion_tokens: Extra inputs are not permitted",
            "invalid_request_error",
        )
    temperature = body.get("temperature", 1)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
        raise Refusal("temperature", "temperature: range: 0..1", "invalid_request_error")
    messages = body["messages"]
    if not messages or messages[0].get("role") != "user":
        raise Refusal("messages", "messages: first message must use the user role", "invalid")
    tools = {t.get("name"): t for t in body.get("tools", [])}
    for name, tool in tools.items():
        if not NAME.match(str(name)):
            raise Refusal("tools.name", "tools.0.name: String should match pattern", "invalid")
        if (tool.get("input_schema") or {}).get("type") != "object":
            raise Refusal("tools.input_schema", "input_schema: type must be object", "invalid")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice["name"] not in tools:
        raise Refusal("tool_choice", "tool_choice: tool not found", "invalid_request_error")
