"""Request and response shapes of the two provider APIs, as pure functions.

openai     any OpenAI-compatible chat-completions endpoint, structured output through
           response_format {type: json_schema, json_schema: {name, strict, schema}}
anthropic  the messages API with one tool whose input_schema is the output schema,
           forced with tool_choice {type: tool, name}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from streamproc.errors import LLMOutputError

TOOL_NAME = "write_case_brief"
ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True)
class LLMRequest:
    system: str
    user: str
    schema: dict[str, Any]
    max_output_tokens: int = 2000


@dataclass(frozen=True)
class LLMResponse:
    content: dict[str, Any]  # the structured answer
    raw: str  # the provider's body, for the audit record
    prompt_tokens: int
    completion_tokens: int
    model: str


class Provider(Protocol):
    name: str

    def build(
        self, req: LLMRequest, model: str, api_key: str | None
    ) -> tuple[str, dict[str, str], dict[str, Any]]: ...

    def parse(self, body: str) -> LLMResponse: ...


def _load(body: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LLMOutputError("provider answered with a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise LLMOutputError("provider answered with JSON that is not an object")
    return data


class OpenAIProvider:
    name = "openai"

    def build(
        self, req: LLMRequest, model: str, api_key: str | None
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": req.system},
                {"role": "user", "content": req.user},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "case_brief", "strict": True, "schema": req.schema},
            },
            "max_tokens": req.max_output_tokens,
            "temperature": 0,
        }
        return "/chat/completions", headers, body

    def parse(self, body: str) -> LLMResponse:
        data = _load(body)
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMOutputError("chat completion has no choices[0].message") from exc
        if message.get("refusal"):
            raise LLMOutputError("the model refused to answer")
        try:
            content = json.loads(message.get("content") or "")
        except ValueError as exc:
            raise LLMOutputError("message content is not JSON") from exc
        if not isinstance(content, dict):
            raise LLMOutputError("message content is not a JSON object")
        usage = data.get("usage") or {}
        return LLMResponse(
            content,
            body,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            str(data.get("model", "")),
        )


class AnthropicProvider:
    name = "anthropic"

    def build(
        self, req: LLMRequest, model: str, api_key: str | None
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        body = {
            "model": model,
            "max_tokens": req.max_output_tokens,
            "system": req.system,
            "messages": [{"role": "user", "content": req.user}],
            "tools": [
                {
                    "name": TOOL_NAME,
                    "description": "Write the case brief.",
                    "input_schema": req.schema,
                }
            ],
            "tool_choice": {"type": "tool", "name": TOOL_NAME},
            "temperature": 0,
        }
        return "/v1/messages", headers, body

    def parse(self, body: str) -> LLMResponse:
        data = _load(body)
        blocks = data.get("content") or []
        tool = next(
            (
                b
                for b in blocks
                if isinstance(b, dict)
                and b.get("type") == "tool_use"
                and b.get("name") == TOOL_NAME
            ),
            None,
        )
        if tool is None or not isinstance(tool.get("input"), dict):
            raise LLMOutputError(f"no {TOOL_NAME} tool_use block in the answer")
        usage = data.get("usage") or {}
        return LLMResponse(
            tool["input"],
            body,
            int(usage.get("input_tokens", 0)),
            int(usage.get("output_tokens", 0)),
            str(data.get("model", "")),
        )


def provider_for(name: str) -> Provider:
    providers: dict[str, Provider] = {"openai": OpenAIProvider(), "anthropic": AnthropicProvider()}
    return providers[name]
