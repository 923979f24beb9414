"""Write-back table: coalesced changelog writes on the right partition, tombstones, views."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import pytest

from streamproc.engine.state import WriteBackTable


class FakeTopic:
    def get_topic_name(self) -> str:
        return "app-windows-changelog"


class FakeTable:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.changelog_topic = FakeTopic()


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes, bytes | None]] = []

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.records.append((topic, partition, key, value))


@pytest.fixture()
def parts() -> tuple[WriteBackTable, FakeTable, Sink]:
    table, sink = FakeTable({"old": {"n": 1}, "gone": {"n": 2}}), Sink()
    return WriteBackTable(table, sink), table, sink


def test_writes_are_coalesced_per_key_on_the_last_writers_partition(parts) -> None:  # type: ignore[no-untyped-def]
    wb, table, sink = parts
    wb.partition = 1
    wb["a"] = {"n": 1}
    wb.partition = 4
    wb["a"] = {"n": 2}
    assert table.data.get("a") is None and wb["a"] == {"n": 2}  # not applied before flush
    assert wb.flush() == 1
    assert sink.records == [("app-windows-changelog", 4, b'"a"', b'{"n":2}')]
    assert table.data["a"] == {"n": 2} and wb.flush() == 0


def test_delete_is_a_tombstone_and_hides_the_key(parts) -> None:  # type: ignore[no-untyped-def]
    wb, table, sink = parts
    wb.partition = 2
    del wb["gone"]
    assert "gone" not in wb and wb.get("gone") is None
    with pytest.raises(KeyError):
        del wb["never"]
    wb.flush()
    assert sink.records == [("app-windows-changelog", 2, b'"gone"', None)]
    assert "gone" not in table.data


def test_len_and_iteration_see_pending_writes(parts) -> None:  # type: ignore[no-untyped-def]
    wb, _, _ = parts
    wb["new"] = 1
    del wb["gone"]
    wb["old"] = {"n": 9}
    assert len(wb) == 2
    assert sorted(wb) == ["new", "old"]
    assert dict(wb.items()) == {"new": 1, "old": {"n": 9}}


class QueueingProducer:
    """Stands in for librdkafka's producer: keeps each record's delivery callback until
    the test says whether it was delivered; `poll` serves the reports that are ready."""

    def __init__(self) -> None:
        self.queued: list[Any] = []
        self.ready: list[tuple[Any, Any]] = []

    def produce(self, topic: str, value: Any, key: Any, partition: int, on_delivery: Any) -> None:
        self.queued.append(on_delivery)

    def deliver(self, n: int, error: str | None = None) -> None:
        for callback in self.queued[:n]:
            self.ready.append((callback, error))
        del self.queued[:n]

    def poll(self, _timeout: float = 0) -> int:
        ready, self.ready = self.ready, []
        for callback, error in ready:
            callback(error, None)
        return len(ready)


def test_durable_resolves_only_once_every_record_before_it_is_delivered() -> None:
    asyncio.run(_durable_is_cumulative())


def checkpoint_of(changelog: Any) -> Any:
    from streamproc.engine.checkpoint import Checkpoint

    def undeliverable(exc: BaseException) -> NoReturn:
        raise AssertionError(f"undeliverable: {exc!r}")

    return Checkpoint(changelog, lambda: None, undeliverable)


async def _durable_is_cumulative() -> None:
    from streamproc.engine.state import ConfluentChangelog

    producer = QueueingProducer()
    changelog = ConfluentChangelog({}, producer=producer)
    checkpoint = checkpoint_of(changelog)
    changelog.produce("t", 0, b"a", b"1")
    changelog.produce("t", 1, b"b", b"2")
    first = asyncio.ensure_future(checkpoint.state_durable())
    changelog.produce("t", 0, b"c", b"3")
    second = asyncio.ensure_future(checkpoint.state_durable())
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    producer.ready.append((producer.queued.pop(2), None))  # the later batch's record first
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()  # cumulative: it waits for the first
    producer.deliver(2)
    await asyncio.wait_for(second, 1)
    assert first.done() and first.exception() is None
    assert await asyncio.wait_for(checkpoint.state_durable(), 1) is None  # nothing open


def test_a_failed_changelog_delivery_fails_its_batch_and_every_later_one() -> None:
    asyncio.run(_failure_propagates())


async def _failure_propagates() -> None:
    from streamproc.engine.state import ChangelogUndelivered, ConfluentChangelog

    producer = QueueingProducer()
    changelog = ConfluentChangelog({}, producer=producer)
    checkpoint = checkpoint_of(changelog)
    changelog.produce("t", 0, b"a", b"1")
    first = asyncio.ensure_future(checkpoint.state_durable())
    changelog.produce("t", 0, b"b", b"2")
    second = asyncio.ensure_future(checkpoint.state_durable())
    producer.deliver(1, error="Local: Message timed out")
    producer.deliver(1)
    with pytest.raises(ChangelogUndelivered, match="timed out"):
        await asyncio.wait_for(first, 1)
    with pytest.raises(ChangelogUndelivered):
        await asyncio.wait_for(second, 1)


def test_a_cancelled_flush_leaves_the_changelog_usable() -> None:
    """An LLM task awaiting persist() is cancelled (rebalance, shutdown) while its records
    are in flight: later batches must still become durable, not raise CancelledError."""
    asyncio.run(_cancelled_flush())


async def _cancelled_flush() -> None:
    from streamproc.engine.state import ConfluentChangelog

    producer = QueueingProducer()
    changelog = ConfluentChangelog({}, producer=producer)
    checkpoint = checkpoint_of(changelog)
    changelog.produce("t", 0, b"a", b"1")
    waiting = asyncio.create_task(checkpoint.persist())  # an LLM task's persist()
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    changelog.produce("t", 0, b"b", b"2")
    later = checkpoint.close_sub_batch()  # the next sub-batch
    producer.deliver(2)
    await asyncio.wait_for(asyncio.shield(later), 1)
    for _ in range(3):  # and every one after it
        changelog.produce("t", 1, b"c", b"3")
        after = checkpoint.close_sub_batch()
        producer.deliver(1)
        await asyncio.wait_for(asyncio.shield(after), 1)
