"""Avro wire codec: Confluent framing with a registry, Avro single-object encoding without.

Decoding accepts both framings whatever the settings say, so a topic can move
from one to the other without a flag day. Errors never quote record content.

The registry is a dependency that can hang. Its client has a timeout and no retries of
its own, and in the worker it is never called on the event loop: schema ids a batch
needs are resolved before it is decoded, in a thread (`resolve_ids`), and the output
schemas are registered at start-up the same way (`register_outputs`). An id that could
not be resolved is remembered for REGISTRY_RETRY_S, so a registry that is away costs one
timeout, not one per record.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
from collections.abc import Iterable
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer

from streamproc.contracts.schemas import EventSchema, SchemaSet, load_schema_text
from streamproc.errors import EventDecodeError, RegistryUnavailableError, UnknownSchemaError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
MAX_RECORD_BYTES = 1_000_000
REGISTRY_TIMEOUT_S = 5.0  # one HTTP call to the registry
REGISTRY_RETRY_S = 30.0  # an id the registry did not give is not asked for again before


class Registry(Protocol):
    """The part of a schema registry client the codec needs (seam for tests)."""

    def register(self, subject: str, schema_text: str) -> int: ...

    def schema_text(self, schema_id: int) -> str: ...

    def ping(self) -> None: ...


class ConfluentRegistry:
    """Confluent Schema Registry over confluent-kafka's client (ids and texts cached).
    The client's defaults are no timeout and retries with time.sleep: both are set here."""

    def __init__(self, url: str, timeout_s: float = REGISTRY_TIMEOUT_S) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient({"url": url, "timeout": timeout_s, "max.retries": 0})

    def register(self, subject: str, schema_text: str) -> int:
        from confluent_kafka.schema_registry import Schema

        return int(self._client.register_schema(subject, Schema(schema_text, "AVRO")))

    def schema_text(self, schema_id: int) -> str:
        return str(self._client.get_schema(schema_id).schema_str)

    def ping(self) -> None:
        """Raises unless the registry answers (readiness)."""
        self._client.get_subjects()


class AvroCodec:
    """Encodes records for a topic and decodes bytes from it into fastavro-native dicts."""

    def __init__(
        self,
        schemas: SchemaSet,
        registry: Registry | None = None,
        *,
        registry_inline: bool = True,
        clock: Any = time.monotonic,
    ) -> None:
        """`registry_inline`: the registry may be called when a record needs it (the CLI);
        the worker passes False and resolves ids and registrations beforehand."""
        self.schemas = schemas
        self.registry = registry
        self.registry_inline = registry_inline
        self.clock = clock
        self._ids: dict[str, int] = {}  # topic → registered id of its current schema
        self._by_id: dict[int, EventSchema] = {}
        self._failed: dict[int, tuple[float, bool]] = {}  # id → (ask again after, unknown?)

    # -- the registry, off the event loop --------------------------------------------

    def unresolved_ids(self, values: Iterable[bytes | None]) -> set[int]:
        """Registry ids that Confluent-framed `values` name and this codec does not hold."""
        out: set[int] = set()
        for data in values:
            if data and data[0] == CONFLUENT_MAGIC and len(data) >= 5:
                (schema_id,) = struct.unpack(">I", data[1:5])
                if schema_id not in self._by_id:
                    out.add(schema_id)
        return out

    async def resolve_ids(self, ids: Iterable[int]) -> tuple[set[int], set[int]]:
        """Fetch the schemas of `ids` in a thread; returns the ids still unresolved:
        (those the registry does not know, those it did not answer for)."""
        unknown: set[int] = set()
        unanswered: set[int] = set()
        for schema_id in ids:
            until, was_unknown = self._failed.get(schema_id, (0.0, False))
            if until > self.clock() or self.registry is None:
                (unknown if was_unknown or self.registry is None else unanswered).add(schema_id)
                continue
            try:
                text = await asyncio.to_thread(self.registry.schema_text, schema_id)
                schema = load_schema_text(text, origin=f"registry id {schema_id}")
            except Exception as exc:  # the client raises its own (and httpx2's) error types
                not_there = getattr(exc, "http_status_code", None) == 404
                self._failed[schema_id] = (self.clock() + REGISTRY_RETRY_S, not_there)
                (unknown if not_there else unanswered).add(schema_id)
                continue
            self._by_id[schema_id] = schema
            self._failed.pop(schema_id, None)
        return unknown, unanswered

    async def register_outputs(self, topics: Iterable[str]) -> None:
        """Register the schemas of the topics this codec writes, in a thread; raises the
        registry client's error when it cannot."""
        assert self.registry is not None
        for topic in topics:
            if topic not in self._ids:
                schema = self.schemas.for_topic(topic)
                subject = f"{topic}-value"
                self._ids[topic] = await asyncio.to_thread(
                    self.registry.register, subject, schema.canonical_json
                )

    def registered(self, topics: Iterable[str]) -> bool:
        return all(topic in self._ids for topic in topics)

    def encode(self, topic: str, record: dict[str, Any]) -> bytes:
        schema = self.schemas.for_topic(topic)
        out = io.BytesIO()
        if self.registry is not None:
            out.write(struct.pack(">bI", CONFLUENT_MAGIC, self._registered_id(topic, schema)))
        else:
            out.write(SINGLE_OBJECT_MAGIC + schema.fingerprint)
        schemaless_writer(out, schema.parsed, record)
        return out.getvalue()

    def decode(self, topic: str, data: bytes | None) -> dict[str, Any]:
        """Decode one record, timestamps as datetimes (fastavro's form); raises
        EventDecodeError (or UnknownSchemaError) when it cannot."""
        return self._decode(topic, data, millis=False)

    def decode_millis(self, topic: str, data: bytes | None) -> dict[str, Any]:
        """Decode one record with its timestamp-millis fields as epoch milliseconds, the
        worker's form (no datetime is built and converted back)."""
        return self._decode(topic, data, millis=True)

    def _decode(self, topic: str, data: bytes | None, millis: bool) -> dict[str, Any]:
        reader = self.schemas.for_topic(topic)
        if not data:
            raise EventDecodeError("empty record value")
        if len(data) > MAX_RECORD_BYTES:
            raise EventDecodeError(f"record is {len(data)} bytes, over {MAX_RECORD_BYTES}")
        writer, offset = self._writer_schema(data)
        buf = io.BytesIO(data)
        buf.seek(offset)
        try:
            # Schema resolution costs ~2x; skip it when the writer is the reader schema.
            if millis:
                resolve_to = None if writer is reader else reader.parsed_millis
                record = schemaless_reader(buf, writer.parsed_millis, resolve_to)
            else:
                resolve_to = None if writer is reader else reader.parsed
                record = schemaless_reader(buf, writer.parsed, resolve_to)
        except (EOFError, StopIteration) as exc:
            raise EventDecodeError("truncated Avro record") from exc
        except UnicodeDecodeError as exc:
            raise EventDecodeError("a string field is not valid UTF-8") from exc
        except Exception as exc:  # fastavro raises plain ValueError/IndexError/... on bad bytes
            raise EventDecodeError(
                f"Avro body does not match the writer schema ({type(exc).__name__})"
            ) from exc
        if buf.tell() != len(data):
            raise EventDecodeError(f"{len(data) - buf.tell()} trailing bytes after the Avro record")
        if not isinstance(record, dict):
            raise EventDecodeError("Avro body is not a record")
        return record

    def _writer_schema(self, data: bytes) -> tuple[EventSchema, int]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise EventDecodeError("single-object header is truncated")
            fp = data[2:10]
            schema = self.schemas.by_fingerprint.get(fp)
            if schema is None:
                raise UnknownSchemaError(f"unknown schema fingerprint {fp.hex()}")
            return schema, 10
        if data[0] == CONFLUENT_MAGIC:
            if len(data) < 5:
                raise EventDecodeError("Confluent header is truncated")
            (schema_id,) = struct.unpack(">I", data[1:5])
            return self._schema_for_id(schema_id), 5
        raise EventDecodeError(
            "not Avro: neither Confluent framing (0x00) nor single-object encoding (0xC3 0x01)"
        )

    def _schema_for_id(self, schema_id: int) -> EventSchema:
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        if self.registry is None:
            raise UnknownSchemaError(
                f"record uses registry schema id {schema_id} but no "
                "STREAMPROC_SCHEMA_REGISTRY_URL is set"
            )
        if not self.registry_inline:  # resolve_ids ran for this batch and could not
            _, unknown = self._failed.get(schema_id, (0.0, False))
            if unknown:
                raise UnknownSchemaError(f"registry has no schema id {schema_id}")
            raise RegistryUnavailableError(
                f"schema id {schema_id} could not be fetched: the registry did not answer"
            )
        try:
            text = self.registry.schema_text(schema_id)
        except Exception as exc:  # the registry client raises its own error types
            raise UnknownSchemaError(f"registry has no usable schema id {schema_id}") from exc
        schema = load_schema_text(text, origin=f"registry id {schema_id}")
        self._by_id[schema_id] = schema
        return schema

    def _registered_id(self, topic: str, schema: EventSchema) -> int:
        if topic not in self._ids:
            assert self.registry is not None
            if not self.registry_inline:
                raise RegistryUnavailableError(
                    f"the schema of {topic} is not registered yet (the registry has not "
                    "answered since start-up)"
                )
            self._ids[topic] = self.registry.register(f"{topic}-value", schema.canonical_json)
        return self._ids[topic]
