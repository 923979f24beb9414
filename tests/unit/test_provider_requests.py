"""Requests real providers accept, against a stand-in that refuses what they refuse.

The stand-in's rules (tests/provider_rules.py) are written from the providers'
published rules; the first tests prove it refuses the requests the issue found
(maxLength in a strict schema, max_tokens and temperature 0 for reasoning models), so
it cannot pass our requests by accepting everything.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from streamproc.brief.draft import output_schema
from streamproc.brief.fallback import build_brief
from streamproc.config import OpenAIDialect
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case
from streamproc.errors import LLMRequestError
from streamproc.llm.briefer import BriefOutcome
from streamproc.llm.client import PROVIDER_MESSAGE_MAX, LLMClient, RetryPolicy
from streamproc.llm.providers import LLMRequest, provider_for
from streamproc.sim.scenario import build_scenario
from tests.conftest import NOW_MS
from tests.llm_stub import StubLLM, masked_briefer
from tests.provider_rules import Refusal, check_anthropic, check_openai
from tests.unit.test_case_and_brief import build_cases

SCHEMA = output_schema(["E1", "E2"])
REQ = LLMRequest("sys", "user", SCHEMA, 1500, output_schema(["E1", "E2"], grammar_bounds=True))


def openai_body(**over: Any) -> dict[str, Any]:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "case_brief", "strict": True, "schema": SCHEMA},
        },
        "max_completion_tokens": 100,
    }
    return {**body, **over}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"maxLength": 2000}, "response_format"),
        ({"minLength": 1}, "response_format"),
        ({"uniqueItems": True}, "response_format"),
    ],
)
def test_the_stand_in_refuses_string_and_array_keywords_strict_mode_does_not_take(
    change: dict[str, Any], param: str
) -> None:
    schema = json.loads(json.dumps(SCHEMA))
    target = "summary" if "Length" in next(iter(change)) else "reason_codes"
    schema["properties"][target].update(change)
    body = openai_body()
    body["response_format"]["json_schema"]["schema"] = schema
    with pytest.raises(Refusal) as refused:
        check_openai(body)
    assert refused.value.param == param and next(iter(change)) in refused.value.message


def test_the_stand_in_refuses_open_objects_and_optional_properties() -> None:
    for mutate in (
        lambda s: s.pop("additionalProperties"),
        lambda s: s["required"].remove("summary"),
        lambda s: s["properties"]["key_facts"]["items"].update(additionalProperties=True),
    ):
        schema = json.loads(json.dumps(SCHEMA))
        mutate(schema)
        body = openai_body()
        body["response_format"]["json_schema"]["schema"] = schema
        with pytest.raises(Refusal):
            check_openai(body)


@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-mini", "o3", "o4-mini", "o1"])
def test_the_stand_in_refuses_what_reasoning_models_refuse(model: str) -> None:
    with pytest.raises(Refusal, match="max_completion_tokens"):
        check_openai(openai_body(model=model, max_tokens=100))
    with pytest.raises(Refusal, match="temperature"):
        check_openai(openai_body(model=model, temperature=0))
    check_openai(openai_body(model=model))  # the default temperature, the new limit: fine


def test_the_stand_in_refuses_bad_anthropic_requests() -> None:
    _, headers, body = provider_for("anthropic").build(REQ, "claude-x", "k")
    check_anthropic(body, headers)
    with pytest.raises(Refusal, match="anthropic-version"):
        check_anthropic(body, {})
    with pytest.raises(Refusal, match="max_tokens"):
        check_anthropic({k: v for k, v in body.items() if k != "max_tokens"}, headers)
    with pytest.raises(Refusal, match="temperature"):
        check_anthropic({**body, "temperature": 1.5}, headers)


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5-mini", "o3"])
def test_openai_requests_are_accepted_for_every_model_family(model: str) -> None:
    _, _, body = provider_for("openai").build(REQ, model, "k")
    check_openai(body)
    assert "temperature" not in body and body["max_completion_tokens"] == 1500
    assert "maxLength" not in json.dumps(body)


def test_dialects_send_what_their_servers_take() -> None:
    _, _, compatible = provider_for("openai", dialect=OpenAIDialect.COMPATIBLE).build(
        REQ, "m", None
    )
    assert compatible["max_tokens"] == 1500 and "max_completion_tokens" not in compatible
    _, _, llama = provider_for("openai", dialect=OpenAIDialect.LLAMACPP).build(REQ, "m", None)
    schema = llama["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["summary"]["maxLength"] <= 1000  # llama.cpp refuses 2,000
    _, _, warm = provider_for("openai", temperature=0.2).build(REQ, "gpt-4o-mini", None)
    assert warm["temperature"] == 0.2
    with pytest.raises(Refusal):  # the stand-in catches a dialect pointed at the wrong server
        check_openai(provider_for("openai", dialect=OpenAIDialect.COMPATIBLE).build(
            REQ, "gpt-5", None)[2])  # fmt: skip


def brief_against_stub(provider: str, dialect: OpenAIDialect, model: str) -> BriefOutcome:
    case: Case = build_cases(SchemaSet(), build_scenario(seed=7, now_ms=NOW_MS))["case-ct-001"]

    async def main() -> BriefOutcome:
        server = StubLLM()
        await server.start()
        base = server.base_url(provider)
        client = LLMClient(provider_for(provider, dialect=dialect), base, model, timeout_s=5)
        briefer = masked_briefer(client)
        try:
            return await briefer.brief(case, build_brief(case, version=1, generated_at_ms=NOW_MS))
        finally:
            await client.aclose()
            await server.stop()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", "gpt-4o-mini"), ("openai", "gpt-5"), ("anthropic", "c")]
)
def test_briefs_come_from_the_model_through_the_strict_stand_in(provider: str, model: str) -> None:
    out = brief_against_stub(provider, OpenAIDialect.OPENAI, model)
    assert out.brief.generation.method == "LLM", out.audit


def test_a_refused_request_falls_back_with_the_providers_words_in_the_audit() -> None:
    """The grammar dialect's maxLength sent to OpenAI: refused, and the audit says why."""
    out = brief_against_stub("openai", OpenAIDialect.LLAMACPP, "gpt-4o-mini")
    assert out.brief.generation.fallback_reason == "request_rejected"
    assert out.audit is not None and "maxLength" in out.audit["provider_error"]
    assert "is not permitted" in out.audit["provider_error"]


def test_provider_messages_are_bounded_and_carry_no_pii() -> None:
    """A provider echoing personal data in its error text: the planted values are searched
    for in the exception and the log line with digits squeezed, not with our detectors."""
    echoed = (
        "Invalid value for card 4539 1488 0343 6467 of chloe.dubois@example.org at "
        "+33 6 12 34 56 78; " + "x" * 2000
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": echoed, "type": "invalid"}})

    async def main() -> LLMRequestError:
        client = LLMClient(
            provider_for("openai"),
            "http://model.test/v1",
            "m",
            transport=httpx.MockTransport(handler),
            retry=RetryPolicy(max_retries=0),
        )
        try:
            await client.complete(REQ)
        except LLMRequestError as exc:
            return exc
        finally:
            await client.aclose()
        raise AssertionError("no error")

    exc = asyncio.run(main())
    message = exc.provider_message or ""
    assert message.startswith("Invalid value for card")
    assert len(message) <= PROVIDER_MESSAGE_MAX
    squeezed = re.sub(r"\D", "", message)
    assert "4539148803436467" not in squeezed and "612345678" not in squeezed
    assert "chloe.dubois" not in message.casefold()
