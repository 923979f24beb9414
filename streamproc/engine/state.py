"""State tables seen through a write-back cache, as Kafka Streams' record cache does.

Within a batch of records, writes to a key are coalesced and sent to the changelog
once, at `flush()`, on the partition of the record that made the last write (the
account's partition: every table is co-partitioned with the inputs). faust itself
would send one changelog record per assignment and pick the partition from its
"current event", which inside a batch is the wrong one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol

import orjson

_DELETED = object()


class ChangelogSink(Protocol):
    """Where changelog records go; a value of None is a tombstone."""

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None: ...


class WriteBackTable(MutableMapping[str, Any]):
    """A faust Table (or any object with `.data` and `.changelog_topic`) with a write-back
    cache. `data` is the mapping the table's store keeps its entries in (by default the
    table's own `.data`); the worker passes the store's plain dict, which is faster."""

    def __init__(
        self, table: Any, sink: ChangelogSink, data: MutableMapping[str, Any] | None = None
    ) -> None:
        self.table = table
        self.data: MutableMapping[str, Any] = table.data if data is None else data
        self.sink = sink
        self.topic = str(table.changelog_topic.get_topic_name())
        self.partition = 0  # set by the worker before each record
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

    def flush(self) -> int:
        """Apply the cached writes to the table and its changelog; returns how many keys."""
        data, n = self.data, len(self._dirty)
        for key, (value, partition) in self._dirty.items():
            # JSON like faust's own "json" serializer, so faust's recovery reads it back.
            raw_key = orjson.dumps(key)
            if value is _DELETED:
                data.pop(key, None)
                self.sink.produce(self.topic, partition, raw_key, None)
            else:
                data[key] = value
                self.sink.produce(self.topic, partition, raw_key, orjson.dumps(value))
        self._dirty.clear()
        return n


class _Delivery:
    """The changelog records produced between two `durable()` calls, and their delivery.
    Delivery reports are served on the event loop's thread (`ConfluentChangelog.poll`),
    so nothing here is shared between threads."""

    __slots__ = ("delivered", "errors", "future", "produced")

    def __init__(self) -> None:
        self.produced = 0
        self.delivered = 0
        self.errors: list[str] = []
        self.future: asyncio.Future[None] | None = None

    def on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
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
            future.set_result(None)


class ChangelogUndelivered(RuntimeError):
    """A changelog record was not delivered within the producer's delivery timeout."""


class ConfluentChangelog:
    """Changelog writes through librdkafka: far cheaper per record than faust's producer path.

    Producing never waits for delivery: the records of the next batch go out while the
    last batch's are being delivered. `durable()` returns a future that resolves once
    every record produced so far is delivered; input offsets are acknowledged only after
    it resolves. Delivery reports are served on the event loop's thread, by `poll()`
    after each batch and by a small task while any future is open: a thread of their own
    cost more (each report then has to take the GIL from the worker; measured with
    py-spy at full ingest: 12% of samples in that thread alone).
    """

    POLL_INTERVAL_S = 0.002

    def __init__(self, config: dict[str, Any], producer: Any = None) -> None:
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer({**config, "linger.ms": 5, "enable.idempotence": True})
        self._producer = producer
        self._open = _Delivery()
        self._tail: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        batch = self._open
        while True:
            try:
                self._producer.produce(topic, value, key, partition, on_delivery=batch.on_delivery)
                batch.produced += 1
                return
            except BufferError:  # the queue is full: serve reports until there is room
                self._producer.poll(0.005)

    def poll(self) -> None:
        """Serve the delivery reports that have arrived (never waits)."""
        self._producer.poll(0)

    def durable(self) -> asyncio.Future[None]:
        """A future resolved when every record produced so far is delivered (raising
        ChangelogUndelivered if one was not). Cumulative: it waits for the ones before."""
        loop = asyncio.get_running_loop()
        batch, self._open = self._open, _Delivery()
        own = batch.seal(loop)
        before = self._tail
        if before is None or (before.done() and before.exception() is None):
            self._tail = own
        else:
            self._tail = asyncio.ensure_future(_both(before, own))
        if not self._tail.done() and (self._poller is None or self._poller.done()):
            self._poller = loop.create_task(self._poll_while_open())
        return self._tail

    async def _poll_while_open(self) -> None:
        while True:
            self._producer.poll(0)
            tail = self._tail
            if tail is None or tail.done():
                return
            await asyncio.sleep(self.POLL_INTERVAL_S)

    async def flush(self) -> None:
        """Wait until every record produced so far is delivered; raise if one was not."""
        await self.durable()


async def _both(first: asyncio.Future[None], second: asyncio.Future[None]) -> None:
    await first
    await second
