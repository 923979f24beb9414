"""Request and response shapes of the two provider APIs, as pure functions.

openai     any OpenAI-compatible chat-completions endpoint, structured output through
           response_format {type: json_schema, json_schema: {name, strict, schema}};
           its dialect (OpenAIDialect) picks the parameters the server takes
anthropic  the messages API with one tool whose input_schema is the output schema,
           forced with tool_choice {type: tool, name}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from streamproc.config import OpenAIDialect
from streamproc.errors import LLMOutputError

TOOL_NAME = "write_case_brief"
ANTHROPIC_VERSION = "2023-06-01"
CUT_SHORT = "the answer was cut at the output token limit (raise LLM_MAX_OUTPUT_TOKENS)"


@dataclass(frozen=True)
class LLMRequest:
    system: str
    user: str
    schema: dict[str, Any]  # the portable (strict-mode) output schema
    max_output_tokens: int = 2000
    grammar_schema: dict[str, Any] | None = None  # with string bounds, for llama.cpp

    def __post_init__(self) -> None:
        if self.grammar_schema is None:
            object.__setattr__(self, "grammar_schema", self.schema)


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

    def error_message(self, body: str) -> str | None: ...


def _load(body: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LLMOutputError("provider answered with a body that is not JSON") from exc
    if not isinstance(data, dict):
        raise LLMOutputError("provider answered with JSON that is not an object")
    return data


class OpenAIProvider:
    """Chat completions. `dialect` says which parameters the server takes: OpenAI (and
    Azure OpenAI) want `max_completion_tokens` (reasoning models refuse `max_tokens`);
    older OpenAI-compatible servers (vLLM, Ollama) know only `max_tokens`; llama.cpp's
    server takes `max_completion_tokens` and enforces string bounds by grammar, which
    helps a small model end its texts. `temperature` is sent only when configured:
    reasoning models refuse any value but their default."""

    name = "openai"

    def __init__(
        self, dialect: OpenAIDialect = OpenAIDialect.OPENAI, temperature: float | None = None
    ) -> None:
        self.dialect, self.temperature = dialect, temperature

    def build(
        self, req: LLMRequest, model: str, api_key: str | None
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        compatible = self.dialect is OpenAIDialect.COMPATIBLE
        limit = "max_tokens" if compatible else "max_completion_tokens"
        schema = req.grammar_schema if self.dialect is OpenAIDialect.LLAMACPP else req.schema
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": req.system},
                {"role": "user", "content": req.user},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "case_brief", "strict": True, "schema": schema},
            },
            limit: req.max_output_tokens,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return "/chat/completions", headers, body

    def error_message(self, body: str) -> str | None:
        """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
        return _error_message(body)

    def parse(self, body: str) -> LLMResponse:
        data = _load(body)
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMOutputError("chat completion has no choices[0].message") from exc
        if choice.get("finish_reason") == "length":
            raise LLMOutputError(CUT_SHORT)
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
    """The messages API with one forced tool. `temperature` only when configured."""

    name = "anthropic"

    def __init__(self, temperature: float | None = None) -> None:
        self.temperature = temperature

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
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return "/v1/messages", headers, body

    def error_message(self, body: str) -> str | None:
        """Anthropic's error shape: {"type": "error", "error": {"type", "message"}}."""
        return _error_message(body)

    def parse(self, body: str) -> LLMResponse:
        data = _load(body)
        if data.get("stop_reason") == "max_tokens":
            raise LLMOutputError(CUT_SHORT)
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


def _error_message(body: str) -> str | None:
    """The provider's own words for a refused request ({"error": {"message": ...}} in both
    APIs), unbounded and unscrubbed: the client bounds and scrubs it."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) and message else None


def provider_for(
    name: str,
    *,
    dialect: OpenAIDialect = OpenAIDialect.OPENAI,
    temperature: float | None = None,
) -> Provider:
    if name == "anthropic":
        return AnthropicProvider(temperature)
    if name == "openai":
        return OpenAIProvider(dialect, temperature)
    raise KeyError(name)
