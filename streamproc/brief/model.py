"""Pydantic model of the case brief; mirrors schemas/case_brief.avsc (a test keeps them equal).

`python -m streamproc.brief.model` prints the JSON Schema export for case tools.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SUMMARY_MAX = 1200


class RiskLevel(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return list(RiskLevel).index(self)


class ReasonCode(StrEnum):
    CARD_TESTING = "CARD_TESTING"
    VELOCITY_SPIKE = "VELOCITY_SPIKE"
    HIGH_AMOUNT = "HIGH_AMOUNT"
    NEW_DEVICE = "NEW_DEVICE"
    DEVICE_RISK = "DEVICE_RISK"
    GEO_MISMATCH = "GEO_MISMATCH"
    IMPOSSIBLE_TRAVEL = "IMPOSSIBLE_TRAVEL"
    ACCOUNT_TAKEOVER = "ACCOUNT_TAKEOVER"
    MULE_ACTIVITY = "MULE_ACTIVITY"
    NEW_PAYEE = "NEW_PAYEE"
    MERCHANT_RISK = "MERCHANT_RISK"
    RULE_HIT = "RULE_HIT"
    OTHER = "OTHER"
    LINKED_ACCOUNTS = "LINKED_ACCOUNTS"
    LINKED_TO_CONFIRMED_FRAUD = "LINKED_TO_CONFIRMED_FRAUD"


class Action(StrEnum):
    REVIEW_TRANSACTIONS = "REVIEW_TRANSACTIONS"
    CONTACT_CUSTOMER = "CONTACT_CUSTOMER"
    VERIFY_DEVICE = "VERIFY_DEVICE"
    HOLD_PENDING_REVIEW = "HOLD_PENDING_REVIEW"
    BLOCK_CARD = "BLOCK_CARD"
    ESCALATE_AML = "ESCALATE_AML"
    REQUEST_DOCUMENTS = "REQUEST_DOCUMENTS"
    CLOSE_AS_FALSE_POSITIVE = "CLOSE_AS_FALSE_POSITIVE"


class Confidence(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class EventKind(StrEnum):
    TRANSACTION = "TRANSACTION"
    DEVICE_SIGNAL = "DEVICE_SIGNAL"
    ALERT = "ALERT"


class Method(StrEnum):
    LLM = "LLM"
    FALLBACK = "FALLBACK"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KeyFact(_Frozen):
    text: str
    evidence_event_ids: list[str] = Field(min_length=1)


class TimelineEntry(_Frozen):
    occurred_at: int = Field(description="epoch milliseconds, UTC")
    event_id: str
    kind: EventKind
    description: str


class Generation(_Frozen):
    method: Method
    provider: str | None = None
    model: str | None = None
    prompt_version: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    fallback_reason: str | None = None
    generator_version: str
    variant: Literal["primary", "shadow", "canary"] = "primary"


class SharedEntity(StrEnum):
    DEVICE = "DEVICE"
    IBAN = "IBAN"
    CARD = "CARD"
    IP = "IP"
    EMAIL = "EMAIL"
    PHONE = "PHONE"


class Disposition(StrEnum):
    CONFIRMED_FRAUD = "CONFIRMED_FRAUD"
    FALSE_POSITIVE = "FALSE_POSITIVE"


class LinkedAccount(_Frozen):
    """Another account seen with an entity of this case (a device, beneficiary IBAN,
    card, IP, email or phone) within the entity index's lookback."""

    account_id: str
    entity_kind: SharedEntity
    case_ids: list[str] = Field(description="cases open on that account that asked about it")
    disposition: Disposition | None = None
    disposition_at: int | None = Field(None, description="epoch milliseconds, UTC")
    household: bool = Field(description="its alerts carry this case's surname: context")
    evidence_event_ids: list[str] = Field(min_length=1)


class CaseCounts(_Frozen):
    transactions: int
    device_signals: int
    alerts: int


class CaseBrief(_Frozen):
    """One analyst-ready brief. Timestamps are epoch milliseconds (timestamp-millis in Avro)."""

    brief_id: str
    brief_version: int = Field(ge=1)
    case_id: str
    account_id: str
    alert_ids: list[str]
    generated_at: int
    window_start: int
    window_end: int
    risk_level: RiskLevel
    risk_score: int = Field(ge=0, le=100)
    reason_codes: list[ReasonCode]
    summary: str = Field(max_length=SUMMARY_MAX)
    key_facts: list[KeyFact]
    timeline: list[TimelineEntry]
    recommended_actions: list[Action]
    confidence: Confidence
    data_gaps: list[str]
    generation: Generation
    redaction: dict[str, int]
    counts: CaseCounts
    linked_accounts: list[LinkedAccount] = Field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        """Dict ready for fastavro (enums as strings, timestamps as epoch ms)."""
        return self.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    schema = CaseBrief.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://streamproc.dev/schemas/case_brief.schema.json"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
