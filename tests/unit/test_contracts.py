"""Data contracts in files agree with each other and with the code that reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamproc.brief import model
from streamproc.brief.model import CaseBrief, json_schema
from streamproc.config import Settings, Topics
from streamproc.contracts.schemas import SCHEMA_DIR, SchemaSet, topic_schema_files
from streamproc.contracts.topics import load_topics
from streamproc.engine.tables import changelog_topics

SPEC_PII = {
    "fraud.transactions.v1": {"card_pan", "counterparty_name", "counterparty_iban", "ip_address"},
    "fraud.device-signals.v1": {"ip_address"},
    "fraud.alerts.v1": {"customer_name", "customer_email", "customer_phone"},
}
SPEC_FREE_TEXT = {
    "fraud.transactions.v1": {"memo", "merchant_name"},
    "fraud.device-signals.v1": {"user_agent"},
    "fraud.alerts.v1": {"analyst_note", "rule_name"},
}


def test_pii_and_free_text_are_marked_in_the_schemas(schemas: SchemaSet) -> None:
    for topic, fields in SPEC_PII.items():
        assert set(schemas.for_topic(topic).pii_fields) == fields
        assert set(schemas.for_topic(topic).free_text_fields) == SPEC_FREE_TEXT[topic]


def test_topic_declarations_match_schemas_and_are_copartitioned() -> None:
    specs = {s.name: s for s in load_topics()}
    for topic, fname in topic_schema_files(Topics()).items():
        assert specs[topic].schema == fname
    inputs = [s for s in specs.values() if s.role == "input"]
    assert {s.name for s in inputs} == set(Topics().inputs)
    n = {s.partitions for s in inputs}
    assert len(n) == 1
    for name in [Topics().settle, *changelog_topics(Settings())]:
        assert specs[name].partitions in n, name
    for name in (Topics().briefs, Topics().dlq, Topics().audit):
        assert name in specs


def _avro_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f["type"] for f in record["fields"]}


def _enum_symbols(avro_type: Any) -> list[str] | None:
    if isinstance(avro_type, dict):
        if avro_type.get("type") == "enum":
            return list(avro_type["symbols"])
        if avro_type.get("type") == "array":
            return _enum_symbols(avro_type["items"])
    return None


def test_avro_brief_and_pydantic_brief_have_the_same_fields_and_enums() -> None:
    avro = json.loads((SCHEMA_DIR / "case_brief.avsc").read_text())
    fields = _avro_fields(avro)
    assert list(fields) == list(CaseBrief.model_fields)
    enums = {
        "risk_level": model.RiskLevel,
        "reason_codes": model.ReasonCode,
        "recommended_actions": model.Action,
        "confidence": model.Confidence,
    }
    for name, enum in enums.items():
        assert _enum_symbols(fields[name]) == [e.value for e in enum], name
    nested = {
        "key_facts": model.KeyFact,
        "timeline": model.TimelineEntry,
        "generation": model.Generation,
        "counts": model.CaseCounts,
    }
    for name, cls in nested.items():
        t = fields[name]
        record = t["items"] if t.get("type") == "array" else t
        assert list(_avro_fields(record)) == list(cls.model_fields), name


def test_json_schema_export_is_current() -> None:
    on_disk = json.loads((SCHEMA_DIR / "case_brief.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(json_schema())), "run `make schemas`"


def test_the_advice_on_recreating_internal_topics_does_not_lose_cases() -> None:
    """Deleting the state topics alone keeps the committed offsets: pending cases would
    never be briefed. The message must say to reset the offsets too."""
    from streamproc.errors import TopologyError
    from streamproc.kafka.admin import check_copartitioned

    inputs = ["fraud.transactions.v1", "fraud.alerts.v1"]
    counts = {"fraud.transactions.v1": 6, "fraud.alerts.v1": 6, "streamproc-settle": 3}
    with pytest.raises(TopologyError) as info:
        check_copartitioned(counts, inputs, internal=["streamproc-settle"])
    message = str(info.value)
    assert "streamproc-settle=3" in message
    assert "reset" in message and "offsets" in message and "stop every worker" in message


def test_readers_of_the_brief_before_linked_accounts_survive_it() -> None:
    """Linked accounts (issue 25) changed the brief's schema: two reason codes, an enum
    default, the `linked_accounts` array with a default. A brief written now is read
    (a) with the writer's schema, as a registry-aware deserializer does: all of it;
    (b) with the reader schema of before, given the enum default this change added:
    the new codes read as OTHER, linked_accounts skipped; and the registry's
    BACKWARD check passes (a reader of now reads a brief of before)."""
    import io

    import fastavro

    new = json.loads((SCHEMA_DIR / "case_brief.avsc").read_text())
    old = json.loads((Path(__file__).parent / "case_brief_v_before_links.avsc").read_text())
    brief = json.loads(
        (
            Path(__file__).parents[2] / "docs" / "examples" / "brief-account-takeover.json"
        ).read_text()
    )
    brief["reason_codes"] = ["LINKED_TO_CONFIRMED_FRAUD", "RULE_HIT"]
    brief["linked_accounts"] = [{
        "account_id": "acct-2", "entity_kind": "DEVICE", "case_ids": ["case-9"],
        "disposition": "CONFIRMED_FRAUD", "disposition_at": 1_790_000_000_000,
        "household": False, "evidence_event_ids": ["evt-1"],
    }]  # fmt: skip

    def roundtrip(writer: dict[str, Any], reader: dict[str, Any], record: dict[str, Any]) -> Any:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
        buf.seek(0)
        return fastavro.schemaless_reader(
            buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
        )

    assert roundtrip(new, new, brief)["linked_accounts"][0]["account_id"] == "acct-2"
    from fastavro._read_common import SchemaResolutionError

    with pytest.raises(SchemaResolutionError):  # the reader of before, as it was
        roundtrip(new, old, brief)
    with_default = json.loads(json.dumps(old))
    codes = next(f for f in with_default["fields"] if f["name"] == "reason_codes")
    codes["type"]["items"]["default"] = "OTHER"
    read = roundtrip(new, with_default, brief)
    assert read["reason_codes"] == ["OTHER", "RULE_HIT"] and "linked_accounts" not in read
    old_brief = {k: v for k, v in brief.items() if k != "linked_accounts"}
    old_brief["reason_codes"] = ["RULE_HIT"]
    assert roundtrip(old, new, old_brief)["linked_accounts"] == []
