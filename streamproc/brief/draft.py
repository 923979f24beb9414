"""What the model writes: the part of a brief that is prose and judgement.

Everything else in a brief (ids, window, timeline, counts, data gaps) comes from the
events, never from the model. The JSON Schema of this model is the structured-output
schema sent to providers (strict: closed enums, no extra properties).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from streamproc.brief.model import Action, Confidence, ReasonCode, RiskLevel

FACT_MAX = 400
DRAFT_SUMMARY_MAX = 2000  # accepted from the model; the guardrails cut to the brief's bound


class DraftFact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(max_length=FACT_MAX)
    evidence_event_ids: list[str]


class BriefDraft(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    risk_level: RiskLevel
    risk_score: int = Field(ge=0, le=100)
    reason_codes: list[ReasonCode]
    summary: str = Field(max_length=DRAFT_SUMMARY_MAX)
    key_facts: list[DraftFact]
    recommended_actions: list[Action]
    confidence: Confidence


def output_schema(refs: list[str] | None = None) -> dict[str, Any]:
    """JSON Schema for providers' strict structured output: every property required,
    no additional properties, definitions inlined; with `refs`, evidence may only cite
    those event references (an enum the provider enforces while it writes)."""
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

    out = dict(inline(schema))
    if refs:
        fact = out["properties"]["key_facts"]["items"]
        fact["properties"]["evidence_event_ids"]["items"] = {"type": "string", "enum": refs}
    return out
