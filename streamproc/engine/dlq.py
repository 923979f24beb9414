"""Dead-letter records: the original key, value and headers, plus why and where from.

Context headers follow Kafka Connect's `__connect.errors.*` names so existing DLQ
tooling reads them. The message is the error's own text, which never quotes values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamproc.errors import EventError

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class InMessage:
    """One consumed record, independent of the client that consumed it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None


class Record(Protocol):
    """What the processor reads of a consumed record: an InMessage, or the consumer's own
    record, which has the same attribute names (its `timestamp` is in milliseconds)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


def as_in_message(record: Any) -> InMessage:
    """An InMessage of a consumed record (copied only when a record is dead-lettered)."""
    if isinstance(record, InMessage):
        return record
    return InMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=list(record.headers or ()),
        timestamp_ms=getattr(record, "timestamp", None),
    )


@dataclass(frozen=True)
class Outgoing:
    """One record to produce. `partition=None` lets the producer's partitioner choose."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    partition: int | None = None


def reason_of(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, EventError) else "processing_error"


def dead_letter(dlq_topic: str, msg: InMessage, exc: BaseException, stage: str) -> Outgoing:
    """The DLQ record for `msg`, which failed at `stage` with `exc`."""
    context = {
        "__connect.errors.topic": msg.topic,
        "__connect.errors.partition": str(msg.partition),
        "__connect.errors.offset": str(msg.offset),
        "__connect.errors.exception.class.name": type(exc).__name__,
        "__connect.errors.exception.message": str(exc)[:1000],
        "__connect.errors.stage": stage,
        "streamproc.errors.reason": reason_of(exc),
    }
    if isinstance(exc, EventError) and exc.field:
        context["streamproc.errors.field"] = exc.field
    headers = list(msg.headers) + [(k, v.encode()) for k, v in context.items()]
    return Outgoing(dlq_topic, msg.key, msg.value, headers)
