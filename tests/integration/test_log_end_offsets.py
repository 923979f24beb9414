"""Log-end offsets as the worker sees them (faust's table recovery and the case gate).

The embedded broker answers ListOffsets(latest) with the last record batch's base offset
plus one; the transport raises it to the high watermark of a Fetch. Here batches of 1,
5 and 10 records go to one partition and the worker's view must be 16, the offset the
next record gets, whatever ListOffsets said.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamproc.engine.internals import fetch_high_watermarks, fetched_log_ends
from streamproc.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def _produce_batches(bootstrap: str, topic: str, sizes: tuple[int, ...]) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for size in sizes:  # one flush per size: one record batch each
        for i in range(size):
            producer.produce(topic, b"record %d" % i, partition=0)
        assert producer.flush(10) == 0
    return sum(sizes)


def test_log_end_is_the_next_offset_whatever_list_offsets_says(broker: EmbeddedBroker) -> None:
    written = _produce_batches(broker.bootstrap, "log-end", (1, 5, 10))

    async def ends() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            tps = [TopicPartition("log-end", 0), TopicPartition("log-end", 1)]
            listed = await consumer.end_offsets(tps)
            return dict(listed), await fetched_log_ends(consumer, listed)
        finally:
            await consumer.stop()

    listed, fetched = asyncio.run(ends())
    print(f"\nListOffsets said {listed}; Fetch said {fetched}")
    assert fetched[TopicPartition("log-end", 0)] == written == 16
    assert fetched[TopicPartition("log-end", 1)] == 0  # an empty partition stays at 0
    assert all(fetched[tp] >= listed[tp] for tp in listed)


def test_log_end_from_a_position_is_the_next_offset_in_one_fetch(broker: EmbeddedBroker) -> None:
    """The inputs gate asks a Fetch at the worker's own position (no ListOffsets): from
    the start, mid-log, at the end and from an empty partition it must give 16. From
    beyond the end Kafka refuses (OFFSET_OUT_OF_RANGE) and the partition is left out (the
    worker then falls back to ListOffsets); the embedded broker answers it: either way
    no wrong end is given."""
    written = _produce_batches(broker.bootstrap, "log-end-from", (1, 5, 10))
    p0, p1 = TopicPartition("log-end-from", 0), TopicPartition("log-end-from", 1)

    async def ends(at: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            return await fetch_high_watermarks(consumer, at)
        finally:
            await consumer.stop()

    for position in (0, 3, 6, 15, 16):
        assert asyncio.run(ends({p0: position, p1: 0})) == {p0: written, p1: 0}, position
    assert asyncio.run(ends({p0: 17})) in ({}, {p0: written})
