"""State tables seen through a write-back cache, as Kafka Streams' record cache does.

Within a batch of records, writes to a key are coalesced and sent to the changelog
once, at `flush()`, on the partition of the record that made the last write (the
account's partition: every table is co-partitioned with the inputs). faust itself
would send one changelog record per assignment and pick the partition from its
"current event", which inside a batch is the wrong one.

No value is written larger than its changelog topic takes (`max_bytes`, from the
topic's declared `max.message.bytes`): a value over it is trimmed by the table's own
`shrink` (domain/bounds.py), or not written at all if it cannot be, and counted.
The store is told which partition each key is on (`StateTracker`), so the keys of a
partition this worker loses are dropped with it (engine/internals.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)
_DELETED = object()
KEY_OVERHEAD = 512  # record headers and framing, beside key and value


class ChangelogSink(Protocol):
    """Where changelog records go; a value of None is a tombstone."""

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None: ...


class StateTracker(Protocol):
    """The store's bookkeeping of which partition each key is on."""

    def note_write(self, key: str, partition: int) -> None: ...

    def note_delete(self, key: str) -> None: ...

    def partition_of(self, key: str) -> int | None: ...


class _Untracked:
    def note_write(self, key: str, partition: int) -> None:
        return None

    def note_delete(self, key: str) -> None:
        return None

    def partition_of(self, key: str) -> int | None:
        return None


Shrink = Callable[[Any, int], object]  # trims a value in place to fit the bytes given
OffsetSink = Callable[[str, int, int], None]  # (topic, partition, offset) delivered


class WriteBackTable(MutableMapping[str, Any]):
    """A faust Table (or any object with `.data` and `.changelog_topic`) with a write-back
    cache. `data` is the mapping the table's store keeps its entries in (by default the
    table's own `.data`); the worker passes the store's plain dict, which is faster."""

    def __init__(
        self,
        table: Any,
        sink: ChangelogSink,
        data: MutableMapping[str, Any] | None = None,
        *,
        tracker: StateTracker | None = None,
        max_bytes: int | None = None,
        shrink: Shrink | None = None,
        on_trim: Callable[[str], None] = lambda _outcome: None,
    ) -> None:
        self.table = table
        self.data: MutableMapping[str, Any] = table.data if data is None else data
        self.sink = sink
        self.topic = str(table.changelog_topic.get_topic_name())
        self.partition = 0  # set by the worker before each record
        self.tracker: StateTracker = tracker if tracker is not None else _Untracked()
        self.max_value_bytes = None if max_bytes is None else max_bytes - KEY_OVERHEAD
        self.shrink = shrink
        self.on_trim = on_trim  # told "trimmed" or "dropped", for the metric
        self._dirty: dict[str, tuple[Any, int]] = {}

    def __getitem__(self, key: str) -> Any:
        hit = self._dirty.get(key)
        if hit is not None:
            if hit[0] is _DELETED:
                raise KeyError(key)
            return hit[0]
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        hit = self._dirty.get(key)
        if hit is not None:
            return default if hit[0] is _DELETED else hit[0]
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._dirty[key] = (value, self.partition)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._dirty[key] = (_DELETED, self.partition)

    def __contains__(self, key: object) -> bool:
        hit = self._dirty.get(key) if isinstance(key, str) else None
        if hit is not None:
            return hit[0] is not _DELETED
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        for key in list(self.data.keys()):
            if key not in self._dirty:
                yield key
        for key, (value, _) in list(self._dirty.items()):
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        data, n = self.data, len(self.data)
        for key, (value, _) in self._dirty.items():
            if value is _DELETED:
                n -= key in data
            else:
                n += key not in data
        return n

    def partition_of(self, key: str) -> int | None:
        """The partition `key` was last written on, as the store knows it."""
        hit = self._dirty.get(key)
        return hit[1] if hit is not None else self.tracker.partition_of(key)

    def flush(self) -> int:
        """Apply the cached writes to the table and its changelog; returns how many keys."""
        data, tracker, n = self.data, self.tracker, len(self._dirty)
        for key, (value, partition) in self._dirty.items():
            # JSON like faust's own "json" serializer, so faust's recovery reads it back.
            raw_key = orjson.dumps(key)
            raw = None if value is _DELETED else self._bounded(key, value, orjson.dumps(value))
            if raw is None:
                data.pop(key, None)
                tracker.note_delete(key)
                self.sink.produce(self.topic, partition, raw_key, None)
            else:
                data[key] = value
                tracker.note_write(key, partition)
                self.sink.produce(self.topic, partition, raw_key, raw)
        self._dirty.clear()
        return n

    def _bounded(self, key: str, value: Any, raw: bytes) -> bytes | None:
        """`raw`, or the value trimmed to fit the topic; None: it cannot be written."""
        limit = self.max_value_bytes
        if limit is None or len(raw) <= limit:
            return raw
        if self.shrink is not None:
            self.shrink(value, limit)
            raw = orjson.dumps(value)
            if len(raw) <= limit:
                self.on_trim("trimmed")
                log.warning(
                    "a state value was trimmed to fit its changelog record",
                    extra={"topic": self.topic, "bytes": len(raw), "limit": limit},
                )
                return raw
        self.on_trim("dropped")
        log.error(
            "a state value too large for its changelog record was not kept",
            extra={"topic": self.topic, "bytes": len(raw), "limit": limit},
        )
        return None


class _Delivery:
    """The changelog records produced between two `durable()` calls, and their delivery.
    Delivery reports are served on the event loop's thread (`ConfluentChangelog.poll`),
    so nothing here is shared between threads."""

    __slots__ = ("delivered", "errors", "future", "last", "on_offset", "produced")

    def __init__(self, on_offset: OffsetSink) -> None:
        self.produced = 0
        self.delivered = 0
        self.errors: list[str] = []
        self.future: asyncio.Future[None] | None = None
        self.on_offset = on_offset
        # The last offset delivered on each (topic, partition): an idempotent producer
        # delivers a partition's records in order. Passed on once, when the batch is
        # complete (one call per record cost 2% of the worker at full ingest).
        self.last: dict[tuple[str, int], int] = {}

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        elif msg is not None:
            self.last[msg.topic(), msg.partition()] = msg.offset()
        self.delivered += 1
        if self.future is not None and self.delivered == self.produced:
            self._resolve()

    def seal(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        self.future = loop.create_future()
        if self.delivered == self.produced:
            self._resolve()
        return self.future

    def _resolve(self) -> None:
        future = self.future
        if future is None or future.done():
            return
        if self.errors:
            future.set_exception(
                ChangelogUndelivered(f"changelog delivery failed: {self.errors[:3]}")
            )
        else:
            for (topic, partition), offset in self.last.items():
                self.on_offset(topic, partition, offset)
            future.set_result(None)


class ChangelogUndelivered(RuntimeError):
    """A changelog record was not delivered within the producer's delivery timeout."""


class ConfluentChangelog:
    """Changelog writes through librdkafka: far cheaper per record than faust's producer path.

    Producing never waits for delivery: the records of the next batch go out while the
    last batch's are being delivered. `seal()` closes the records produced since the last
    seal into a batch and returns the future of that batch's delivery (engine.checkpoint
    chains them, so that durable means "every record so far"). Delivery reports are
    served on the event loop's thread, by `poll()` after each batch and by a small task
    while any sealed batch is undelivered: a thread of their own cost more (each report
    then has to take the GIL from the worker; measured with py-spy at full ingest: 12% of
    samples in that thread alone).
    """

    POLL_INTERVAL_S = 0.002

    def __init__(
        self,
        config: dict[str, Any],
        producer: Any = None,
        on_offset: OffsetSink = lambda _topic, _partition, _offset: None,
    ) -> None:
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer({**config, "linger.ms": 5, "enable.idempotence": True})
        self._producer = producer
        self._on_offset = on_offset  # each delivered record's offset (the store's position)
        self._open = _Delivery(on_offset)
        self._undelivered = 0  # sealed batches whose delivery is not complete
        self._sealed_at: dict[int, float] = {}  # id(future) → when it was sealed
        self._poller: asyncio.Task[None] | None = None
        self.failed = False  # a delivery failed: readiness says so until the worker exits

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        batch = self._open
        while True:
            try:
                self._producer.produce(topic, value, key, partition, on_delivery=batch.on_delivery)
                batch.produced += 1
                return
            except BufferError:  # the queue is full: serve reports until there is room
                self._producer.poll(0.005)

    async def warm(self, topics: tuple[str, ...], timeout_s: float = 5.0) -> None:
        """Learn the topics' leaders now, off the loop: a first record to a topic the
        producer has not written waits for that metadata (measured: the entity index's
        first asks took 300-400 ms longer than the rest)."""
        loop = asyncio.get_running_loop()
        for topic in topics:
            try:
                await loop.run_in_executor(None, self._producer.list_topics, topic, timeout_s)
            except Exception:  # a slow broker: the first records wait, as before
                log.warning("producer metadata for %s not fetched in %.0f s", topic, timeout_s)

    def poll(self) -> None:
        """Serve the delivery reports that have arrived (never waits)."""
        self._producer.poll(0)

    def seal(self) -> asyncio.Future[None]:
        """The delivery of every record produced since the last seal (raising
        ChangelogUndelivered if one was not delivered)."""
        loop = asyncio.get_running_loop()
        batch, self._open = self._open, _Delivery(self._on_offset)
        future = batch.seal(loop)
        if not future.done():
            self._undelivered += 1
            self._sealed_at[id(future)] = time.monotonic()
            future.add_done_callback(self._delivered)
            if self._poller is None or self._poller.done():
                self._poller = loop.create_task(self._poll_while_undelivered())
        elif future.exception() is not None:
            self.failed = True
        return future

    def _delivered(self, future: asyncio.Future[None]) -> None:
        self._undelivered -= 1
        self._sealed_at.pop(id(future), None)
        if not future.cancelled() and future.exception() is not None:
            self.failed = True

    @property
    def undelivered(self) -> int:
        """Sealed batches not delivered yet."""
        return self._undelivered

    def oldest_undelivered_s(self) -> float:
        """How long the oldest undelivered batch has waited (0 when none waits)."""
        if not self._sealed_at:
            return 0.0
        return time.monotonic() - min(self._sealed_at.values())

    async def _poll_while_undelivered(self) -> None:
        while self._undelivered:
            self._producer.poll(0)
            await asyncio.sleep(self.POLL_INTERVAL_S)
