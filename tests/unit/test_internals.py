"""The faust/aiokafka internals the worker overrides are there, and pinned."""

from __future__ import annotations

import logging
import re
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer

from streamproc.engine import internals

ROOT = Path(__file__).resolve().parents[2]


def test_every_private_name_the_worker_uses_is_in_the_installed_versions() -> None:
    assert internals.missing() == []
    internals.check()


def test_a_name_removed_by_an_upgrade_fails_the_start_up_check_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(faust_consumer.Consumer, "_add_gap")
    with pytest.raises(RuntimeError, match=r"Consumer\._add_gap"):
        internals.check()


def test_a_consumer_attribute_no_longer_declared_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    annotations = dict(faust_consumer.Consumer.__annotations__)
    del annotations["_acked_index"]
    monkeypatch.setattr(faust_consumer.Consumer, "__annotations__", annotations)
    with pytest.raises(RuntimeError, match="_acked_index"):
        internals.check()


@pytest.mark.parametrize("package", ["faust-streaming", "mode-streaming", "aiokafka"])
def test_packages_whose_internals_are_overridden_are_pinned_to_a_minor_release(
    package: str,
) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [spec] = [d for d in deps if re.match(rf"{re.escape(package)}\b", d)]
    low, high = re.fullmatch(rf"{re.escape(package)}>=([\d.]+),<([\d.]+)", spec).groups()
    installed = tuple(int(x) for x in version(package).split(".")[:2])
    assert tuple(int(x) for x in low.split(".")[:2]) <= installed
    assert installed < tuple(int(x) for x in high.split("."))
    assert len(high.split(".")) == 2 and high.split(".")[0] == low.split(".")[0]


def test_the_worker_consumer_reads_committed(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the integration test of an open upstream transaction cannot show on the
    embedded broker (it does not filter aborted records; Apache Kafka does, for a
    consumer that asks): the worker's consumer asks, and aiokafka's fetcher, built from
    it as in start(), sends isolation level 1 (read committed) in its Fetch requests."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import READ_COMMITTED, Fetcher
    from aiokafka.consumer.subscription_state import SubscriptionState
    from faust.transport.drivers import aiokafka as driver

    async def main() -> None:
        plain = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        assert plain._isolation_level == "read_uncommitted"  # aiokafka's default
        monkeypatch.setattr(
            driver.AIOKafkaConsumerThread, "_create_worker_consumer", lambda self, t: plain
        )
        thread = object.__new__(internals._ConsumerThread)
        consumer = thread._create_worker_consumer(SimpleNamespace(fetch_max_wait_ms=20))
        assert consumer is plain and consumer._isolation_level == "read_committed"
        fetcher = Fetcher(
            consumer._client, SubscriptionState(), isolation_level=consumer._isolation_level
        )
        try:
            assert fetcher._isolation_level == READ_COMMITTED == internals.READ_COMMITTED
        finally:
            await fetcher.close()
            await consumer.stop()

    asyncio.run(main())


class _Sink:
    """What BatchConsumer hands its input records to: here, a list."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.handed: list[int] = []
        self.checkpoint = SimpleNamespace(add=lambda *_args: None)
        self.input_topics = ("fraud.alerts.v1",)

    async def handle(self, batch: list[Any]) -> Any:
        import asyncio

        self.handed += [r.offset for r in batch]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _consumer_after_a_seek(committed: int) -> tuple[Any, Any, list[tuple[Any, int]]]:
    """A BatchConsumer whose partition was just given back to it and seeked to the
    group's committed offset (what faust's Recovery does on assignment), with a real
    aiokafka SubscriptionState holding that position; records the seeks it is told."""
    import asyncio
    from collections import defaultdict
    from types import SimpleNamespace

    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition
    from faust.types import TP

    tp = TP("fraud.alerts.v1", 3)
    state = SubscriptionState()
    state.assign_from_user({TopicPartition(tp.topic, tp.partition)})
    state.seek(TopicPartition(tp.topic, tp.partition), committed)
    aiokafka_consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=state))
    consumer = object.__new__(internals.BatchConsumer)
    seeks: list[tuple[Any, int]] = []

    async def seek(partition: Any, offset: int) -> None:
        seeks.append((partition, offset))
        state.seek(TopicPartition(partition.topic, partition.partition), offset)

    async def settle(keep: int) -> None:
        return None

    consumer.__dict__.update(
        _thread=SimpleNamespace(_ensure_consumer=lambda: aiokafka_consumer),
        _sink=_Sink(),
        _order={"fraud.alerts.v1": 0},
        _epoch=1,
        _idle=asyncio.Event(),
        _read_offset=defaultdict(lambda: None, {tp: committed}),  # as perform_seek sets it
        _committed_offset=defaultdict(lambda: None, {tp: committed}),
        _buffered_partitions=set(),
        flow_active=True,
        app=SimpleNamespace(consumer_generation_id=2),
        seek=seek,
        _settle=settle,
        diag=SimpleNamespace(set_flag=lambda _f: None, unset_flag=lambda _f: None),
        log=logging.getLogger("test.BatchConsumer"),
    )
    return consumer, tp, seeks


def test_records_fetched_before_a_seek_back_are_not_handled() -> None:
    """The chaos test lost an alert this way: a worker's sub-batch holding offset 2 was
    dropped at a rebalance (never acknowledged), the worker got the partition back and
    was seeked to the committed offset 2; the answer of a fetch made before, records 3
    and 4, came in after the seek and was handled. Offsets 3 and 4 acknowledged with 2
    missing, faust's commit stepped over 2 (it allows one missing offset), and the
    alert at 2 never reached the worker again."""
    import asyncio
    from types import SimpleNamespace

    holder: list[Any] = []

    async def main() -> None:
        consumer, tp, seeks = _consumer_after_a_seek(committed=2)
        holder.extend((consumer, tp, seeks))
        stale = [SimpleNamespace(offset=3), SimpleNamespace(offset=4)]
        fetches = [({tp: stale}, {tp})]
        stopped = asyncio.Event()

        async def next_records(_timeout: float) -> Any:
            if not fetches:
                stopped.set()
                return {}, {tp}
            return fetches.pop(0)

        consumer.__dict__.update(
            _stopped=stopped, _crashed=asyncio.Event(), _wait_next_records=next_records
        )
        await consumer._drain_messages(SimpleNamespace(_stopped=asyncio.Event()))

    asyncio.run(main())
    consumer, _tp, seeks = holder
    assert consumer._sink.handed == []  # read again from offset 2, in order
    assert seeks == []  # and the position stays at 2: no seek forward over it


def test_reading_again_never_seeks_forward_of_the_position() -> None:
    """A paused partition's fetched records are read again by seeking back to the
    first; when a rebalance's seek already put the position before them, seeking to
    them would step over the records between."""
    import asyncio

    async def main() -> None:
        consumer, tp, seeks = _consumer_after_a_seek(committed=2)
        await consumer._read_again(tp, 3)
        assert seeks == []
        consumer, tp, seeks = _consumer_after_a_seek(committed=9)  # fetched 5..8, paused
        await consumer._read_again(tp, 5)
        assert seeks == [(tp, 5)]

    asyncio.run(main())
