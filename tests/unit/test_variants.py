"""Shadow and canary variants: which variant writes which case, where each brief goes,
and what each costs. Against a stand-in OpenAI server that records what it was asked."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from streamproc.brief.fallback import build_brief
from streamproc.config import Settings, Variant
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.engine.dlq import Outgoing
from streamproc.engine.llm_stage import llm_stage
from streamproc.engine.processor import BriefPlan
from streamproc.llm.variants import in_canary
from streamproc.ops.metrics import Metrics
from streamproc.sim.scenario import build_scenario
from tests.conftest import NOW_MS
from tests.llm_stub import StubInThread
from tests.unit.test_case_and_brief import build_cases
from tests.unit.test_llm_stage import Table

V2_ONLY = "Order the key facts as an analyst checks them"  # a line of prompts/brief-v2.yaml


def test_the_canary_share_is_stable_and_about_its_size() -> None:
    ids = [f"case-{i:05d}" for i in range(10_000)]
    assert not any(in_canary(c, 0.0) for c in ids)
    assert all(in_canary(c, 1.0) for c in ids)
    chosen = [c for c in ids if in_canary(c, 0.1)]
    assert 850 <= len(chosen) <= 1150  # 10%, give or take the hash
    assert chosen == [c for c in ids if in_canary(c, 0.1)]  # the same cases every time
    assert set(chosen) <= {c for c in ids if in_canary(c, 0.2)}  # a larger share adds cases


def test_a_variant_changes_only_what_it_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_LLM_SHADOW", '{"prompt_version": "brief-v2"}')
    settings = Settings(llm_provider="openai", llm_model="m-1", llm_api_key="sk-primary")
    shadow = settings.for_variant(settings.llm_shadow or Variant())
    assert (shadow.llm_prompt_version, shadow.llm_model) == ("brief-v2", "m-1")
    assert shadow.llm_api_key_value() == "sk-primary"
    assert shadow.llm_shadow is None and shadow.llm_canary is None
    for name in Variant.model_fields:  # each stands for the setting of its name after "llm_"
        assert f"llm_{name}" in Settings.model_fields, name
    monkeypatch.setenv("STREAMPROC_LLM_SHADOW", '{"modle": "typo"}')
    with pytest.raises(ValidationError, match="modle"):
        Settings()


def test_canary_writes_its_share_and_shadow_writes_every_case_to_its_own_topic() -> None:
    schemas = SchemaSet()
    codec = AvroCodec(schemas)
    cases = build_cases(schemas, build_scenario(seed=7, now_ms=NOW_MS))
    # a share that puts some cases in the canary and some not
    hashes = sorted(_position(c) for c in cases)
    share = (hashes[0] + hashes[-1]) / 2
    published: list[BriefPlan] = []
    sent: list[Outgoing] = []

    async def publish(plan: BriefPlan) -> None:
        published.append(plan)

    async def send(out: Outgoing) -> None:
        sent.append(out)

    async def nothing() -> None:
        return None

    with StubInThread() as stub:
        settings = Settings(
            llm_provider="openai",
            llm_base_url=f"{stub.url}/v1",
            llm_model="m-primary",
            llm_api_key="sk-test",
            llm_canary=Variant(model="m-canary"),
            llm_canary_share=share,
            llm_shadow=Variant(model="m-shadow", prompt_version="brief-v2"),
        )
        metrics = Metrics(CollectorRegistry())

        async def main() -> None:
            stage = llm_stage(settings, codec, metrics, Table(), publish, send, nothing)
            assert stage is not None
            for case in cases.values():
                floor = build_brief(case, version=1, generated_at_ms=NOW_MS)
                out = Outgoing("fraud.case-briefs.v1", case.case_id.encode(), b"", [])
                await stage._brief(BriefPlan(case.case_id, floor, out, 0.0, 0, case))
            await asyncio.gather(*stage.shadow_tasks)
            for briefer in (stage.briefer, stage.canary, stage.shadow):
                assert briefer is not None
                await briefer.client.aclose()

        asyncio.run(main())
        asked = [(r["body"]["model"], r["body"]["messages"][0]["content"]) for r in stub.requests]

    canary = {c for c in cases if in_canary(c, share)}
    assert canary and canary != set(cases)
    assert sorted(p.case_id for p in published) == sorted(cases)  # one analysts' brief each
    for plan in published:
        gen = plan.brief.generation
        expected = ("canary", "m-canary") if plan.case_id in canary else ("primary", "m-primary")
        assert (gen.variant, gen.model, gen.method) == (*expected, "LLM")
        assert plan.output.topic == "fraud.case-briefs.v1"
    shadow = [o for o in sent if o.topic == "fraud.case-briefs.shadow.v1"]
    assert sorted(o.key.decode() for o in shadow) == sorted(cases)  # every case, once
    for out in shadow:
        brief = codec.decode("fraud.case-briefs.shadow.v1", out.value)
        assert brief["generation"]["variant"] == "shadow"
        assert brief["generation"]["prompt_version"] == "brief-v2"
        assert brief["generation"]["model"] == "m-shadow"
    audits = [json.loads(o.value) for o in sent if o.topic == "fraud.llm-audit.v1"]
    assert sorted(a["variant"] for a in audits) == sorted(
        ["shadow"] * len(cases)
        + ["canary"] * len(canary)
        + ["primary"] * (len(cases) - len(canary))
    )
    # the shadow, and only the shadow, was asked with the v2 prompt
    assert {m for m, system in asked if V2_ONLY in system} == {"m-shadow"}
    assert {m for m, _ in asked} == {"m-primary", "m-canary", "m-shadow"}
    tokens = {
        variant: metrics.registry.get_sample_value(
            "streamproc_llm_tokens_total", {"type": "prompt", "variant": variant}
        )
        for variant in ("primary", "canary", "shadow")
    }
    assert all(v and v > 0 for v in tokens.values()), tokens


def _position(case_id: str) -> float:
    """Where a case falls in [0, 1): the canary takes those below its share."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big") / 2**64


def test_a_canary_that_trips_falls_back_alone_and_says_which_variant() -> None:
    """The canary's provider fails: its cases get the deterministic brief, marked canary,
    with the reason; the primary's cases are still written by the primary."""
    schemas = SchemaSet()
    codec = AvroCodec(schemas)
    cases = build_cases(schemas, build_scenario(seed=7, now_ms=NOW_MS))
    share = sorted(_position(c) for c in cases)[1] + 1e-9  # the two lowest are the canary's
    published: list[BriefPlan] = []

    async def publish(plan: BriefPlan) -> None:
        published.append(plan)

    async def nothing(*_: object) -> None:
        return None

    with StubInThread() as primary, StubInThread() as broken:
        broken.default = "500"
        settings = Settings(
            llm_provider="openai",
            llm_base_url=f"{primary.url}/v1",
            llm_model="m-primary",
            llm_api_key="sk-test",
            llm_max_retries=0,
            llm_canary=Variant(base_url=f"{broken.url}/v1", model="m-canary"),
            llm_canary_share=share,
        )
        metrics = Metrics(CollectorRegistry())

        async def main() -> None:
            stage = llm_stage(settings, codec, metrics, Table(), publish, nothing, nothing)
            assert stage is not None and stage.canary is not None
            for case in cases.values():
                floor = build_brief(case, version=1, generated_at_ms=NOW_MS)
                out = Outgoing("fraud.case-briefs.v1", case.case_id.encode(), b"", [])
                await stage._brief(BriefPlan(case.case_id, floor, out, 0.0, 0, case))
            await stage.briefer.client.aclose()
            await stage.canary.client.aclose()

        asyncio.run(main())

    canary = {c for c in cases if in_canary(c, share)}
    assert len(canary) == 2
    for plan in published:
        gen = plan.brief.generation
        if plan.case_id in canary:
            assert (gen.variant, gen.method, gen.fallback_reason) == (
                "canary",
                "FALLBACK",
                "provider_error",
            )
        else:
            assert (gen.variant, gen.method) == ("primary", "LLM")
    fallbacks = metrics.registry.get_sample_value(
        "streamproc_llm_fallbacks_total", {"reason": "provider_error", "variant": "canary"}
    )
    assert fallbacks == 2
