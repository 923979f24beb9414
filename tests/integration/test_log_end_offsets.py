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

from streamproc.engine.internals import fetched_log_ends
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
