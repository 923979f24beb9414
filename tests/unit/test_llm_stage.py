"""The LLM stage retries a failing model path a bounded number of times, then the
deterministic brief goes out with its reason: no case is stuck pending for ever."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from streamproc.brief.fallback import build_brief
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.engine.dlq import Outgoing
from streamproc.engine.llm_stage import MAX_STAGE_FAILURES, LLMStage
from streamproc.engine.processor import BriefPlan
from streamproc.llm.client import LLMClient
from streamproc.llm.providers import provider_for
from streamproc.ops.metrics import Metrics
from streamproc.sim.scenario import build_scenario
from tests.conftest import NOW_MS
from tests.llm_stub import GOOD_ANSWER, masked_briefer
from tests.unit.test_case_and_brief import build_cases


class RefusesModelBriefs(AvroCodec):
    """A codec that cannot encode the model's briefs (a bug in the making)."""

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        if record.get("generation", {}).get("method") == "LLM":
            raise ValueError("cannot encode")
        return super().encode(topic, record)


class Table(dict[str, Any]):
    partition = 0


def test_a_model_path_that_keeps_failing_ends_in_the_deterministic_brief() -> None:
    schemas = SchemaSet()
    case = build_cases(schemas, build_scenario(seed=7, now_ms=NOW_MS))["case-ct-001"]
    floor = build_brief(case, version=1, generated_at_ms=NOW_MS)
    codec = RefusesModelBriefs(schemas)
    plan = BriefPlan(
        case.case_id, floor, Outgoing("fraud.case-briefs.v1", b"k", b"v", []), 0.0, 0, case
    )
    answer = {**GOOD_ANSWER, "risk_level": "CRITICAL"}

    def handler(request: httpx.Request) -> httpx.Response:
        message = {"role": "assistant", "content": json.dumps(answer)}
        return httpx.Response(200, json={"model": "m", "choices": [{"message": message}]})

    published: list[BriefPlan] = []

    async def publish(p: BriefPlan) -> None:
        published.append(p)

    async def nothing(*_: Any) -> None:
        return None

    async def main() -> LLMStage:
        client = LLMClient(
            provider_for("openai"), "http://m.test/v1", "m", transport=httpx.MockTransport(handler)
        )
        briefer = masked_briefer(client)
        settings = Settings(llm_provider="openai", llm_model="m")
        stage = LLMStage(
            settings, codec, Metrics(CollectorRegistry()), briefer, Table(), publish, nothing,
            nothing,
        )  # fmt: skip
        for _ in range(MAX_STAGE_FAILURES):
            await stage._brief(plan)
            assert published == []  # still pending, tried again next round
        await stage._brief(plan)
        await client.aclose()
        return stage

    stage = asyncio.run(main())
    [out] = published
    assert out.brief.generation.method == "FALLBACK"
    assert out.brief.generation.fallback_reason == "stage_error"
    assert out.brief.risk_level == floor.risk_level and plan.case_id not in stage.failures
