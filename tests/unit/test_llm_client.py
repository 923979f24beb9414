"""The LLM client against a real loopback stand-in provider, in both API shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from streamproc.brief.draft import output_schema
from streamproc.errors import (
    LLMBudgetExhausted,
    LLMCircuitOpen,
    LLMOutputError,
    LLMQuotaExhausted,
    LLMRateLimited,
    LLMTimeout,
    LLMTransportError,
)
from streamproc.llm.client import Budget, CircuitBreaker, CircuitState, LLMClient, RetryPolicy
from streamproc.llm.providers import LLMRequest, provider_for
from tests.llm_stub import GOOD_ANSWER, StubLLM

T = TypeVar("T")
REQ = LLMRequest(system="sys", user="<case_data>{}</case_data>", schema=output_schema())
SECRET = "sk-test-never-logged"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(scenario: Callable[[StubLLM], Awaitable[T]], **stub: Any) -> T:
    async def main() -> T:
        server = StubLLM(**stub)
        await server.start()
        try:
            return await scenario(server)
        finally:
            await server.stop()

    return asyncio.run(main())


def client(server: StubLLM, provider: str = "openai", **kw: Any) -> tuple[LLMClient, list[float]]:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    base = f"{server.url}/v1" if provider == "openai" else server.url
    kw.setdefault("timeout_s", 2.0)
    return LLMClient(
        provider_for(provider), base, "m-1", api_key=SECRET, sleep=fake_sleep, **kw
    ), waits


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_structured_answer_in_both_shapes(provider: str) -> None:
    async def scenario(server: StubLLM) -> None:
        c, _ = client(server, provider)
        result = await c.complete(REQ)
        await c.aclose()
        assert result.response.content == GOOD_ANSWER and result.retries == 0
        assert result.response.prompt_tokens > 1000 and result.response.completion_tokens > 100
        [req] = server.requests
        body, headers = req["body"], req["headers"]
        if provider == "openai":
            fmt = body["response_format"]
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
            assert fmt["json_schema"]["schema"] == output_schema()
            assert headers["Authorization"] == f"Bearer {SECRET}"
            assert [m["role"] for m in body["messages"]] == ["system", "user"]
        else:
            assert body["tool_choice"] == {"type": "tool", "name": "write_case_brief"}
            assert body["tools"][0]["input_schema"] == output_schema()
            assert headers["x-api-key"] == SECRET and headers["anthropic-version"]
            assert body["system"] == "sys"

    run(scenario)


@pytest.mark.parametrize(("mode", "wait"), [("429", 1.0), ("429-ms", 0.25)])
def test_retry_after_is_honoured(mode: str, wait: float) -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = [mode]
        c, waits = client(server)
        result = await c.complete(REQ)
        await c.aclose()
        assert result.retries == 1 and waits == [wait] and len(server.requests) == 2

    run(scenario)


def test_retry_after_beyond_the_cap_falls_back_at_once() -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = ["429-long"]
        c, waits = client(server, retry=RetryPolicy(retry_after_cap_s=20))
        with pytest.raises(LLMRateLimited):
            await c.complete(REQ)
        await c.aclose()
        assert waits == [] and len(server.requests) == 1

    run(scenario)


def test_quota_exhausted_is_not_retried() -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = ["quota"]
        c, waits = client(server)
        with pytest.raises(LLMQuotaExhausted):
            await c.complete(REQ)
        await c.aclose()
        assert len(server.requests) == 1 and waits == []

    run(scenario)


@pytest.mark.parametrize("mode", ["500", "529"])
def test_server_errors_are_retried_with_capped_backoff_then_fail(mode: str) -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = [mode] * 4
        c, waits = client(server, retry=RetryPolicy(max_retries=3, base_s=0.5, cap_s=1.0))
        with pytest.raises(LLMTransportError):
            await c.complete(REQ)
        await c.aclose()
        assert len(server.requests) == 4 and len(waits) == 3
        assert all(0 <= w <= 1.0 for w in waits)
        assert c.breaker.failures == 1  # one failed call, however many attempts

    run(scenario)


def test_recovers_when_the_provider_comes_back() -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = ["500", "529"]
        c, _ = client(server)
        result = await c.complete(REQ)
        await c.aclose()
        assert result.retries == 2 and result.response.content == GOOD_ANSWER

    run(scenario)


def test_a_hung_provider_times_out() -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = ["hang", "hang"]
        c, _ = client(server, timeout_s=0.3, retry=RetryPolicy(max_retries=1))
        with pytest.raises(LLMTimeout):
            await c.complete(REQ)
        await c.aclose()
        assert len(server.requests) == 2

    run(scenario)


@pytest.mark.parametrize(
    ("provider", "mode"),
    [
        ("openai", "nonjson"),
        ("openai", "refusal"),
        ("anthropic", "refusal"),
        ("anthropic", "nonjson"),
    ],
)
def test_malformed_answers_are_output_errors_not_retried(provider: str, mode: str) -> None:
    async def scenario(server: StubLLM) -> None:
        server.script = [mode]
        c, _ = client(server, provider)
        with pytest.raises(LLMOutputError) as info:
            await c.complete(REQ)
        await c.aclose()
        assert len(server.requests) == 1 and c.breaker.failures == 0
        assert SECRET not in str(info.value)

    run(scenario)


def test_breaker_opens_refuses_then_probes_and_closes() -> None:
    clock = Clock()

    async def scenario(server: StubLLM) -> None:
        server.script = ["500"] * 4
        breaker = CircuitBreaker(threshold=2, reset_after_s=30, clock=clock)
        c, _ = client(server, breaker=breaker, retry=RetryPolicy(max_retries=1))
        for _ in range(2):
            with pytest.raises(LLMTransportError):
                await c.complete(REQ)
        assert breaker.state is CircuitState.OPEN
        sent = len(server.requests)
        with pytest.raises(LLMCircuitOpen):
            await c.complete(REQ)
        assert len(server.requests) == sent  # refused without a request
        clock.now += 30
        assert breaker.state is CircuitState.HALF_OPEN
        result = await c.complete(REQ)  # the probe succeeds
        assert result.response.content == GOOD_ANSWER and breaker.state is CircuitState.CLOSED
        await c.aclose()

    run(scenario)


def test_failed_probe_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, reset_after_s=10, clock=clock)
    breaker.failure()
    clock.now += 10
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failure()
    assert breaker.state is CircuitState.OPEN


def test_concurrency_is_capped() -> None:
    async def scenario(server: StubLLM) -> None:
        c, _ = client(server, max_concurrency=2)
        results = await asyncio.gather(*(c.complete(REQ) for _ in range(6)))
        await c.aclose()
        assert len(results) == 6 and server.max_concurrent == 2

    run(scenario, delay_s=0.1)


def test_connections_are_kept_for_every_call_in_flight() -> None:
    """Three rounds of 40 calls at once open 40 connections, not one per call: httpx
    keeps 20 by default, so above that every call opened (to a provider, with a TLS
    handshake) and closed a connection of its own."""

    async def scenario(server: StubLLM) -> None:
        c, _ = client(server, max_concurrency=40)
        for _ in range(3):
            await asyncio.gather(*(c.complete(REQ) for _ in range(40)))
        await c.aclose()
        assert server.max_concurrent == 40
        assert len(server.connections) == 40, len(server.connections)

    run(scenario, delay_s=0.2)


def test_daily_token_budget_stops_calls_until_the_next_day() -> None:
    day = ["2026-11-23"]

    async def scenario(server: StubLLM) -> None:
        budget = Budget(tokens_per_day=2000, today=lambda: day[0])
        c, _ = client(server, budget=budget)
        await c.complete(REQ)  # 1,350 tokens
        await c.complete(REQ)  # under budget when it started: 2,700 now
        with pytest.raises(LLMBudgetExhausted):
            await c.complete(REQ)
        assert len(server.requests) == 2
        day[0] = "2026-11-24"
        await c.complete(REQ)
        assert len(server.requests) == 3
        await c.aclose()

    run(scenario)


def test_requests_per_minute_limit_falls_back_instead_of_waiting_long() -> None:
    async def scenario(server: StubLLM) -> None:
        budget = Budget(requests_per_minute=2, wait_cap_s=0.2)
        c, _ = client(server, budget=budget, retry=RetryPolicy(max_retries=0))
        await c.complete(REQ)
        await c.complete(REQ)
        with pytest.raises(LLMRateLimited, match="local rate limit"):
            await c.complete(REQ)
        assert len(server.requests) == 2
        await c.aclose()

    run(scenario)
