"""What the model writes: the part of a brief that is prose and judgement.

Everything else in a brief (ids, window, timeline, counts, data gaps) comes from the
events, never from the model. The JSON Schema of this model is the structured-output
schema sent to providers, kept inside the subset every provider accepts (OpenAI's
strict mode is the narrowest): closed enums, every object closed with every property
required, no length bounds on strings (the guardrails cut texts after parsing), and
every array bounded, so a grammar-constrained model cannot repeat items until it runs
out of tokens.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streamproc.brief.model import Action, Confidence, ReasonCode, RiskLevel

FACT_MAX = 400  # characters of a key fact; the guardrails cut longer ones
MAX_FACTS = 8
MAX_EVIDENCE = 10  # event references per fact
MAX_FACT_REASONS = 3  # reason codes a fact is evidence for
# Only for servers that enforce them by grammar (llama.cpp), where they stop a small
# model rambling; OpenAI's strict mode refuses them. llama.cpp cannot build a grammar
# for maxLength 2,000 ("failed to parse grammar"); these it builds.
# A 135M model fills every bound it is given: at the old 1,000/300 characters and 8 facts
# it wrote 1,000+ tokens a brief, 100+ s on a busy 2-core machine.
GRAMMAR_MAX_LENGTHS = {"summary": 600, "text": 200}
GRAMMAR_MAX_FACTS = 4


class DraftFact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    evidence_event_ids: list[str] = Field(max_length=MAX_EVIDENCE)
    reason_codes: list[ReasonCode] = Field(
        default_factory=list,  # drafts cached before this field read as showing none
        max_length=MAX_FACT_REASONS,
        description="The reason codes this fact is evidence for; may be empty.",
    )


class BriefDraft(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    risk_level: RiskLevel
    risk_score: int = Field(ge=0, le=100)
    reason_codes: list[ReasonCode] = Field(max_length=len(ReasonCode))
    summary: str
    key_facts: list[DraftFact] = Field(max_length=MAX_FACTS)
    recommended_actions: list[Action] = Field(max_length=len(Action))
    confidence: Confidence


def output_schema(refs: list[str] | None = None, *, grammar_bounds: bool = False) -> dict[str, Any]:
    """JSON Schema for providers' strict structured output: every property required,
    no additional properties, definitions inlined; with `refs`, evidence may only cite
    those event references (an enum the provider enforces while it writes). With
    `grammar_bounds`, strings get GRAMMAR_MAX_LENGTHS (llama.cpp only).

    A fresh copy each call (callers may change it); the inlining runs once per process,
    since pydantic's schema generation costs milliseconds and every request needs it."""
    out: dict[str, Any] = orjson.loads(_inlined_schema())
    fact = out["properties"]["key_facts"]["items"]
    if refs:
        evidence = fact["properties"]["evidence_event_ids"]
        evidence["items"] = {"type": "string", "enum": list(refs)}
    if grammar_bounds:
        out["properties"]["summary"]["maxLength"] = GRAMMAR_MAX_LENGTHS["summary"]
        fact["properties"]["text"]["maxLength"] = GRAMMAR_MAX_LENGTHS["text"]
        out["properties"]["key_facts"]["maxItems"] = GRAMMAR_MAX_FACTS
    return out


@functools.cache
def _inlined_schema() -> bytes:
    schema = BriefDraft.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            out = {k: inline(v) for k, v in node.items() if k not in ("title", "default")}
            if out.get("type") == "object":
                out["additionalProperties"] = False
                out["required"] = sorted(out.get("properties", {}))
            return out
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return orjson.dumps(inline(schema))
