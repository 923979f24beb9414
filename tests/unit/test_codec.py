"""Wire codec: both framings round-trip, bad bytes fail with the right error and no values."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from streamproc.contracts.codec import SINGLE_OBJECT_MAGIC, AvroCodec
from streamproc.contracts.records import from_json, normalize
from streamproc.contracts.schemas import SCHEMA_DIR, SchemaSet
from streamproc.errors import EventDecodeError, UnknownSchemaError
from tests.conftest import NOW_MS, TXN_TOPIC

PAN = "4111111111111111"


class FakeRegistry:
    """In-memory stand-in for a schema registry (the codec's seam)."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.subjects: dict[str, int] = {}

    def register(self, subject: str, schema_text: str) -> int:
        for sid, text in self.texts.items():
            if text == schema_text:
                self.subjects[subject] = sid
                return sid
        sid = 100 + len(self.texts)
        self.texts[sid] = schema_text
        self.subjects[subject] = sid
        return sid

    def schema_text(self, schema_id: int) -> str:
        return self.texts[schema_id]


@pytest.fixture()
def txn(schemas: SchemaSet) -> dict[str, object]:
    return from_json(
        schemas.for_topic(TXN_TOPIC),
        {
            "event_id": "e1",
            "transaction_id": "t1",
            "account_id": "a1",
            "occurred_at": "2026-09-21T10:00:00Z",
            "amount_minor": 1234,
            "currency": "EUR",
            "direction": "DEBIT",
            "channel": "CARD_NOT_PRESENT",
            "status": "APPROVED",
            "card_pan": PAN,
        },
        now_ms=NOW_MS,
    )


def test_single_object_round_trip(codec: AvroCodec, schemas: SchemaSet, txn: dict) -> None:
    data = codec.encode(TXN_TOPIC, txn)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == schemas.for_topic(TXN_TOPIC).fingerprint
    assert normalize(schemas.for_topic(TXN_TOPIC), codec.decode(TXN_TOPIC, data)) == txn


def test_fingerprint_is_crc64_avro_little_endian(schemas: SchemaSet) -> None:
    # Avro spec test vector: CRC-64-AVRO of the canonical form "null" is 0x63dd24e7cc258f8a.
    from fastavro.schema import fingerprint

    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == struct.pack(
        "<Q", 0x63DD24E7CC258F8A
    )


def test_confluent_framing_round_trip_and_cross_decoding(schemas: SchemaSet, txn: dict) -> None:
    registry = FakeRegistry()
    framed = AvroCodec(schemas, registry).encode(TXN_TOPIC, txn)
    assert (
        framed[0] == 0
        and struct.unpack(">I", framed[1:5])[0] == registry.subjects[f"{TXN_TOPIC}-value"]
    )
    # A registry-enabled decoder reads both framings.
    decoder = AvroCodec(schemas, registry)
    single = AvroCodec(schemas).encode(TXN_TOPIC, txn)
    for data in (framed, single):
        assert normalize(schemas.for_topic(TXN_TOPIC), decoder.decode(TXN_TOPIC, data)) == txn


def test_confluent_record_without_registry_is_unknown_schema(
    codec: AvroCodec, schemas: SchemaSet, txn: dict
) -> None:
    framed = AvroCodec(schemas, FakeRegistry()).encode(TXN_TOPIC, txn)
    with pytest.raises(UnknownSchemaError, match="no STREAMPROC_SCHEMA_REGISTRY_URL"):
        codec.decode(TXN_TOPIC, framed)


def test_unknown_registry_id(schemas: SchemaSet, txn: dict) -> None:
    codec = AvroCodec(schemas, FakeRegistry())
    with pytest.raises(UnknownSchemaError, match="id 999"):
        codec.decode(TXN_TOPIC, b"\x00" + struct.pack(">I", 999) + b"\x02")


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda d: b"", EventDecodeError, "empty"),
        (lambda d: b"garbage bytes", EventDecodeError, "not Avro"),
        (lambda d: d[:-4], EventDecodeError, "truncated"),
        (lambda d: d + b"\x00\x01", EventDecodeError, "trailing"),
        (lambda d: d[:2] + b"\x01" * 8 + d[10:], UnknownSchemaError, "fingerprint"),
        (lambda d: d[:6], EventDecodeError, "truncated|header"),
        (lambda d: b"\xc3\x01" + b"x" * 2_000_000, EventDecodeError, "over"),
    ],
)
def test_bad_bytes(codec: AvroCodec, txn: dict, mutate, error, match) -> None:  # type: ignore[no-untyped-def]
    data = mutate(codec.encode(TXN_TOPIC, txn))
    with pytest.raises(error, match=match) as info:
        codec.decode(TXN_TOPIC, data)
    assert PAN not in str(info.value)


def test_invalid_utf8_is_a_decode_error(codec: AvroCodec, txn: dict) -> None:
    data = codec.encode(TXN_TOPIC, {**txn, "event_id": "é"})
    bad = data.replace("é".encode(), b"\xff\xfe")
    with pytest.raises(EventDecodeError, match="UTF-8"):
        codec.decode(TXN_TOPIC, bad)


def test_older_writer_schema_from_history_is_readable(tmp_path: Path, txn: dict) -> None:
    """Backward-compatible evolution: a producer on an older/newer schema version still decodes."""
    for f in SCHEMA_DIR.glob("*.avsc"):
        (tmp_path / f.name).write_text(f.read_text())
    raw = json.loads((SCHEMA_DIR / "transaction.avsc").read_text())
    raw["fields"].append({"name": "loyalty_tier", "type": ["null", "string"], "default": None})
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "transaction.v2.avsc").write_text(json.dumps(raw))
    schemas = SchemaSet(schema_dir=tmp_path)
    newer = schemas.by_fingerprint  # writer with the extra field
    import io

    from fastavro import parse_schema, schemaless_writer

    parsed = parse_schema(raw, _write_hint=False)
    fp = next(fp for fp, s in newer.items() if "loyalty_tier" in s.fields)
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, {**txn, "loyalty_tier": "gold"})
    decoded = AvroCodec(schemas).decode(TXN_TOPIC, SINGLE_OBJECT_MAGIC + fp + buf.getvalue())
    assert "loyalty_tier" not in decoded and decoded["event_id"] == "e1"
