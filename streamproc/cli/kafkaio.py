"""Publish JSON events to a topic and read decoded records back (used by the CLI and demo)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec, ConfluentRegistry
from streamproc.contracts.records import from_json, to_jsonable
from streamproc.contracts.schemas import SchemaSet
from streamproc.errors import BrokerError, ConfigError, EventError
from streamproc.kafka.clients import base_config, producer_config


def make_codec(settings: Settings, *, registry_inline: bool = True) -> AvroCodec:
    """The codec for `settings`; the worker passes registry_inline=False (the registry is
    then never called on its event loop: codec docstring)."""
    registry = (
        ConfluentRegistry(settings.schema_registry_url) if settings.schema_registry_url else None
    )
    return AvroCodec(SchemaSet(settings.topics), registry, registry_inline=registry_inline)


@dataclass
class PublishReport:
    sent: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, message)

    @property
    def ok(self) -> bool:
        return not self.errors


def publish_lines(
    settings: Settings, topic: str, lines: Iterable[str], codec: AvroCodec | None = None
) -> PublishReport:
    """Validate and produce JSONL; bad lines are reported by number, good ones still sent."""
    codec = codec or make_codec(settings)
    schema = codec.schemas.for_topic(topic)
    key_field = "case_id" if topic == settings.topics.briefs else "account_id"
    report = PublishReport()
    failed: list[str] = []
    producer = Producer(producer_config(settings))

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            report.errors.append((lineno, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        try:
            record = from_json(schema, obj)
        except EventError as exc:
            report.errors.append((lineno, str(exc)))
            continue
        producer.produce(
            topic,
            key=str(record[key_field]).encode(),
            value=codec.encode(topic, record),
            on_delivery=on_delivery,
        )
        producer.poll(0)
        report.sent += 1
    if producer.flush(30.0):
        raise BrokerError(f"records to {topic} not delivered within 30s; is Kafka reachable?")
    if failed:
        raise BrokerError(f"{len(failed)} record(s) to {topic} failed: {failed[0]}")
    return report


def publish_events(
    settings: Settings, topic: str, events: Iterable[dict[str, Any]], codec: AvroCodec | None = None
) -> PublishReport:
    return publish_lines(settings, topic, (json.dumps(e) for e in events), codec)


def produce_raw(
    settings: Settings,
    topic: str,
    key: bytes | None,
    value: bytes,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    """Produce bytes as they are (for poison-record tests and demos)."""
    producer = Producer(producer_config(settings))
    producer.produce(topic, key=key, value=value, headers=headers or [])
    if producer.flush(30.0):
        raise BrokerError(f"record to {topic} not delivered within 30s")


def read_records(
    settings: Settings,
    topic: str,
    *,
    max_records: int | None = None,
    timeout_s: float = 10.0,
    codec: AvroCodec | None = None,
    iso_times: bool = False,
    to_end: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield decoded records from the start of every partition (no consumer group join),
    until `max_records` or `timeout_s`. With `to_end`, until every partition has been
    read to its end once, i.e. what the topic held when it was read; BrokerError if that
    takes longer than `timeout_s`, so a partial read is never taken for the whole.
    Timestamps are epoch milliseconds, or ISO-8601 strings with `iso_times`."""
    codec = codec or make_codec(settings)
    has_schema = topic in codec.schemas.by_topic
    consumer = Consumer(
        {
            **base_config(settings),
            "group.id": f"streamproc-tail-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": to_end,
        }
    )
    try:
        md = consumer.list_topics(topic, timeout=10.0)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise ConfigError(f"topic {topic} does not exist")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        deadline, count = time.monotonic() + timeout_s, 0
        not_at_end = set(meta.partitions)
        while time.monotonic() < deadline and (max_records is None or count < max_records):
            msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    not_at_end.discard(msg.partition())
                    if to_end and not not_at_end:
                        return
                    continue
                raise BrokerError(f"reading {topic}: {error.str()}")
            count += 1
            yield _decoded(codec, topic, has_schema, msg, iso_times)
        if to_end and (max_records is None or count < max_records):
            raise BrokerError(
                f"reading {topic}: {len(not_at_end)} partition(s) not read to their end "
                f"within {timeout_s:g}s"
            )
    finally:
        consumer.close()


def _decoded(
    codec: AvroCodec, topic: str, has_schema: bool, msg: Any, iso_times: bool
) -> dict[str, Any]:
    if has_schema:
        try:
            return dict(to_jsonable(codec.decode(topic, msg.value()), iso_times=iso_times))
        except EventError as exc:
            return {"_undecodable": str(exc), **_raw(msg)}
    return _raw(msg)


def _raw(msg: Any) -> dict[str, Any]:
    value = msg.value()
    try:
        decoded: Any = json.loads(value) if value else None
    except (ValueError, UnicodeDecodeError):
        decoded = None
    out: dict[str, Any] = {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "key": msg.key().decode("utf-8", "replace") if msg.key() else None,
        "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])},
    }
    if decoded is not None:
        out["value"] = decoded
    else:
        out["value_b64"] = base64.b64encode(value or b"").decode()
    return out
