"""The faust/aiokafka internals the worker overrides are there, and pinned."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

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
