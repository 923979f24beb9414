"""faust's aiokafka transport: the consumer's fetch max-wait made configurable, and
log-end offsets read from a Fetch response.

faust hard-codes `fetch_max_wait_ms=1500`. A broker that holds a fetch until that wait
expires (the embedded Tansu does; real Kafka answers as soon as data arrives) makes it
the largest part of alert-to-brief latency, because every brief waits for its settle
tick to be fetched. Measured on the embedded broker at 3,600 events/s: p50 859 ms and
p99 1,552 ms at 1500; p50 200 ms and p99 309 ms at 100. On real Kafka a short wait only
costs a few more empty fetches while the worker is idle.

Log-end offsets (`highwaters`) feed faust's table recovery, which reads each changelog
partition up to them, and the case gate. aiokafka asks ListOffsets for them; the
embedded broker answers it with the base offset of the partition's last record batch
plus one, short of the real end whenever that batch holds more than one record, so a
restarted worker restored its tables without their newest changelog records (found by
the kill -9 fault test). The high watermark in a Fetch response is right on every
broker, so `highwaters` also fetches at the listed end and takes the larger number.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka.errors import KafkaError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as driver

log = logging.getLogger(__name__)
READ_UNCOMMITTED = 0
FETCH_WAITS_MS = (1, 10, 100)


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its Fetcher in start(); faust passed 1500.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer

    async def getmany(self, active_partitions: Any, timeout: float) -> Any:
        # faust hands over its live set of active partitions, and the request waits its
        # turn on this thread while faust pauses and resumes partitions in that set. An
        # empty set means every assigned partition to aiokafka, which then returns records
        # of paused partitions: faust drops them, and aiokafka's position has moved past
        # them. Ask for the partitions active at the time of asking, never for all.
        if active_partitions is not None:
            active_partitions = set(active_partitions)
            if not active_partitions:
                return {}
        return await super().getmany(active_partitions, timeout)

    async def _highwaters(self, partitions: Any) -> Mapping[Any, int]:
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        return await fetched_log_ends(self._ensure_consumer(), listed)


async def fetched_log_ends(consumer: Any, listed: Mapping[Any, int]) -> dict[Any, int]:
    """The log-end offsets in `listed` (from ListOffsets), each raised to the high
    watermark of a Fetch at that offset (one request per leader, one byte at most).

    The Fetch asks for no minimum, so Kafka answers at once; the embedded broker waits
    out the max-wait when there is nothing to return, and leaves out every partition
    when that wait is zero, so the wait starts at 1 ms and grows for partitions that
    were left out."""
    client = consumer._client
    ends = dict(listed)
    keys = {(tp.topic, tp.partition): tp for tp in listed}
    unanswered = set(keys)
    for max_wait_ms in FETCH_WAITS_MS:
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for topic, partition in unanswered:
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            if node is not None and node >= 0:
                end = max(int(listed[keys[(topic, partition)]]), 0)
                by_node[node][topic].append((partition, end, 1))
        for node, topics in by_node.items():
            request = FetchRequest(max_wait_ms, 0, 1, READ_UNCOMMITTED, list(topics.items()))
            try:
                response = await client.send(node, request)
            except KafkaError:  # keep the listed offsets; the caller asks again later
                log.debug("log-end fetch failed", exc_info=True)
                continue
            for topic, parts in response.topics:
                for partition, error_code, highwater, *_ in parts:
                    if (topic, partition) not in keys or error_code != 0:
                        continue
                    unanswered.discard((topic, partition))
                    key = keys[(topic, partition)]
                    ends[key] = max(ends[key], int(highwater))
        if not unanswered:
            break
    return ends


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = _Consumer
    fetch_max_wait_ms = 1500


def install(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Give `app` the aiokafka transport with our fetch max-wait."""
    transport = Transport(app.conf.broker_consumer, app)
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    app.transport = transport
