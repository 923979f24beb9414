"""Linked accounts across workers, through the real broker (issue 25).

Oracles of the test's own: which worker owns an account's partition is read from each
worker's /metrics and the account's partition computed with the Java client's murmur2
(aiokafka's); the shared values are planted by the test and searched for in the raw
bytes of the entity index's topics, its changelog and every request the model stand-in
received.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, TopicPartition

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import EmbeddedBroker, free_port, stop_child
from streamproc.sim.scenario import HOUR, MIN, _Builder
from tests.integration.conftest import (
    WorkerHandle,
    cli,
    published_briefs,
    start_worker,
    worker_env,
)
from tests.llm_stub import StubInThread

pytestmark = pytest.mark.integration
PARTITIONS = 6
KEY = "integration-entity-key-0123456789"
DEVICE = "dev-shared-9c1e77"
IBAN = "GB33BUKB20201555555555"
PAN = "4539578763621486"
IP = "81.2.69.160"
PLANTED = (DEVICE, IBAN, PAN, "4539 5787 6362 1486", IP)
INDEX_TOPICS = (
    "streamproc-entity-index",
    "streamproc-entity-links",
    "streamproc-entities-changelog",
)


def _partition(account: str) -> int:
    return (murmur2(account.encode()) & 0x7FFFFFFF) % PARTITIONS


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    pytest.fail(f"timed out: {what}")


def _owned(w: WorkerHandle) -> set[int]:
    return {
        p for p in range(PARTITIONS) if w.metric("streamproc_partitions_owned", partition=str(p))
    }


def _split(workers: list[WorkerHandle]) -> list[set[int]]:
    """Each worker's partitions once the group has settled on an assignment of all six."""

    def settled() -> list[set[int]] | None:
        owned = [_owned(w) for w in workers]
        together = set().union(*owned)
        if len(together) == PARTITIONS and all(owned) and sum(map(len, owned)) == PARTITIONS:
            return owned
        return None

    first = _wait(settled, 90, "the group's assignment")
    time.sleep(3)
    again = _wait(settled, 30, "the group's assignment")
    assert again == first, "the group was still rebalancing"
    return first


def _account_on(partitions: set[int], prefix: str) -> str:
    return next(a for i in range(500) if _partition(a := f"{prefix}-{i}") in partitions)


def _events(linked: str, flagged: str, now: int, device: str = DEVICE) -> tuple[_Builder, _Builder]:
    """`linked` was seen with the device, the card and the IBAN a day ago; `flagged` uses
    them now and is alerted on."""
    a = _Builder(11, now)
    a.sig(linked, now - 24 * HOUR, "LOGIN", device, geo="DE", ip_address=IP)
    a.txn(linked, now - 24 * HOUR + MIN, 2_000, device_id=device, card_pan=PAN,
          channel="CARD_NOT_PRESENT")  # fmt: skip
    a.transfer(linked, now - 24 * HOUR + 2 * MIN, 90_000, counterparty_iban=IBAN)
    b = _Builder(12, now)
    b.sig(flagged, now - 30 * MIN, "LOGIN", device, geo="DE", ip_address=IP)
    pay = b.transfer(flagged, now - 20 * MIN, 240_000, counterparty_iban=IBAN, device_id=device)
    b.s.alerts.append(b.alert(flagged, f"case-{flagged}", now - 19 * MIN, "R-APP-1", "MEDIUM",
                              0.4, [pay], customer_name="Dana Whitfield",
                              customer_email="dana.w@example.org"))  # fmt: skip
    return a, b


def _publish(settings: Settings, b: _Builder) -> None:
    publish_events(settings, "fraud.device-signals.v1", b.s.signals)
    publish_events(settings, "fraud.transactions.v1", b.s.transactions)
    if b.s.alerts:
        publish_events(settings, "fraud.alerts.v1", b.s.alerts)


def _raw(settings: Settings, topic: str) -> list[bytes]:
    """Every record of `topic`, key and value bytes, from the start to the end."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "raw-reader",
                  "enable.auto.commit": False})  # fmt: skip
    try:
        parts = [TopicPartition(topic, p, 0) for p in range(PARTITIONS)]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(PARTITIONS)}  # fmt: skip
        c.assign(parts)
        out: list[bytes] = []
        deadline = time.monotonic() + 30
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < PARTITIONS and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            out.append((m.key() or b"") + b"\x00" + (m.value() or b""))
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
        assert len(done) == PARTITIONS, f"{topic}: not read to its end"
        return out
    finally:
        c.close()


def _env(broker: EmbeddedBroker, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        **worker_env(broker.bootstrap, tmp_path),
        "STREAMPROC_HTTP_PORT": str(free_port()),
        "STREAMPROC_DATA_DIR": str(tmp_path / f"state-{name}"),
        "STREAMPROC_ENTITY_KEY": KEY,
        **extra,
    }


def _brief_of(settings: Settings, case_id: str) -> dict[str, Any] | None:
    return next((b for b in published_briefs(settings) if b["case_id"] == case_id), None)


def _no_planted(
    settings: Settings, stub_sent: bytes, also: tuple[str, ...] = (), device: str = DEVICE
) -> None:
    for topic in INDEX_TOPICS:
        records = _raw(settings, topic)
        assert records or topic == "streamproc-settle", f"{topic} is empty: nothing searched"
        blob = b"\n".join(records)
        for value in (*PLANTED, device):
            assert value.encode() not in blob, f"{value!r} on {topic}"
    # No planted entity (the device id too: it is a placeholder to the model) and no
    # linked account's id reaches the model.
    for value in (*PLANTED, device, *also):
        assert value.encode() not in stub_sent, f"{value!r} sent to the model"
    assert b"LINKED_ACCOUNT_1" in stub_sent or not also, "the model did not see the links"


def test_an_account_on_one_worker_links_to_an_account_on_the_other(
    tmp_path: Path,
) -> None:
    with (
        EmbeddedBroker(log_path=tmp_path / "broker.log").running() as broker,
        StubInThread() as stub,
    ):
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        llm = {"STREAMPROC_LLM_PROVIDER": "openai", "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
               "STREAMPROC_LLM_MODEL": "stub-gpt"}  # fmt: skip
        env1, env2 = _env(broker, tmp_path, "w1", **llm), _env(broker, tmp_path, "w2", **llm)
        assert cli(env1, "topics", "apply").returncode == 0
        workers = [start_worker(env1, tmp_path / "w1.log")]
        try:
            workers.append(start_worker(env2, tmp_path / "w2.log"))
            own1, own2 = _split(workers)
            linked, flagged = _account_on(own2, "acct-link"), _account_on(own1, "acct-flag")
            device = _device_on(own2)  # the flagged case's sighting and ask cross workers
            now = int(time.time() * 1000)
            a, b = _events(linked, flagged, now, device)
            _publish(settings, a)
            entries = lambda: sum(  # noqa: E731  (applied here or read from the index topic)
                w.metric("streamproc_state_entries", table="entities") for w in workers
            )
            _wait(lambda: entries() >= 4, 30, "the linked account's sightings indexed")
            _publish(settings, b)
            brief = _wait(lambda: _brief_of(settings, f"case-{flagged}"), 60, "the brief")
            assert [w.proc.poll() for w in workers] == [None, None]
            assert [_owned(w) for w in workers] == [own1, own2], "a rebalance moved them"
            assert _partition(flagged) in own1 and _partition(linked) in own2
            kinds = {la["entity_kind"] for la in brief["linked_accounts"]
                     if la["account_id"] == linked}  # fmt: skip
            assert kinds == {"DEVICE", "IBAN", "IP"}, brief["linked_accounts"]
            carriers = {e["event_id"] for e in b.s.signals + b.s.transactions}
            for la in brief["linked_accounts"]:
                assert set(la["evidence_event_ids"]) <= carriers
            assert any("other account" in f["text"] for f in brief["key_facts"])
            assert stub.requests, "the model was not asked"
            _no_planted(settings, stub.sent(), also=(linked,), device=device)
        finally:
            for w in reversed(workers):
                stop_child(w.proc, 20.0)


def _device_on(partitions: set[int]) -> str:
    """A device id whose entity index partition is one of `partitions` (the worker's own
    routing: its keyed hash, which the test can compute as it holds the key)."""
    from streamproc.network.entities import EntityHasher, EntityKind
    from streamproc.network.links import partition_of

    hasher = EntityHasher(KEY.encode())
    for i in range(500):
        device = f"dev-shared-k{i}"
        key = hasher.key_of(EntityKind.DEVICE, device)
        if key is not None and partition_of(key, PARTITIONS) in partitions:
            return device
    raise AssertionError("no device id found")


def _run_clean(tmp_path: Path, now: int, device: str) -> dict[str, Any]:
    with EmbeddedBroker(log_path=tmp_path / "clean.log").running() as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        env = _env(broker, tmp_path, "clean")
        assert cli(env, "topics", "apply").returncode == 0
        w = start_worker(env, tmp_path / "clean-w.log")
        try:
            a, b = _events("acct-link-k", "acct-flag-k", now, device)
            _publish(settings, a)
            _wait(lambda: w.metric("streamproc_links_messages_total", kind="s") >= 3, 30, "seen")
            _publish(settings, b)
            return _wait(lambda: _brief_of(settings, "case-acct-flag-k"), 60, "clean brief")
        finally:
            stop_child(w.proc, 20.0)


def test_kill_9_between_the_ask_and_the_answer_gives_the_clean_runs_brief(
    tmp_path: Path,
) -> None:
    """The case's owner asks; the owner of the device's index partition is stopped, so
    that answer cannot come; the case's owner is killed -9. The survivor takes every
    partition, answers the ask it finds on the index topic, reads the answer and briefs:
    the brief states the links and has the id a clean run of the same events gives."""
    now = int(time.time() * 1000)
    with EmbeddedBroker(log_path=tmp_path / "broker.log").running() as broker:
        settings = Settings(kafka_bootstrap=broker.bootstrap)
        slow = {"STREAMPROC_LINKS_MAX_WAIT_MS": "120000"}
        env1, env2 = _env(broker, tmp_path, "w1", **slow), _env(broker, tmp_path, "w2", **slow)
        assert cli(env1, "topics", "apply").returncode == 0
        w1 = start_worker(env1, tmp_path / "w1.log")
        w2: WorkerHandle | None = None
        try:
            w2 = start_worker(env2, tmp_path / "w2.log")
            own1, own2 = _split([w1, w2])
            if _partition("acct-flag-k") not in own1:  # the case's owner is the one killed
                w1, w2, own1, own2 = w2, w1, own2, own1
            device = _device_on(own2)
            a, b = _events("acct-link-k", "acct-flag-k", now, device)
            _publish(settings, a)
            indexed = lambda: sum(  # noqa: E731  (applied here or read from the index topic)
                w.metric("streamproc_state_entries", table="entities") for w in (w1, w2)
            )
            _wait(lambda: indexed() >= 4, 30, "the sightings indexed")
            os.kill(w2.proc.pid, signal.SIGSTOP)  # the device's index owner answers nothing
            try:
                _publish(settings, b)
                _wait(lambda: w1.metric("streamproc_links_messages_total", kind="q") >= 3,
                      30, "the case's asks")  # fmt: skip
                time.sleep(1.0)  # its state (the asks made) reaches the changelog
                assert _brief_of(settings, "case-acct-flag-k") is None, "briefed unanswered"
                os.kill(w1.proc.pid, signal.SIGKILL)
                w1.proc.wait(10)
            finally:
                os.kill(w2.proc.pid, signal.SIGCONT)
            brief = _wait(lambda: _brief_of(settings, "case-acct-flag-k"), 120, "the brief")
            assert w2.proc.poll() is None
            assert not any("timed out" in g for g in brief["data_gaps"]), brief["data_gaps"]
            assert {la["entity_kind"] for la in brief["linked_accounts"]} == {
                "DEVICE",
                "IBAN",
                "IP",
            }
            _no_planted(settings, b"", device=device)
        finally:
            for w in (w2, w1):
                if w is not None and w.proc.poll() is None:
                    stop_child(w.proc, 20.0)
    clean = _run_clean(tmp_path, now, device)
    assert brief["brief_id"] == clean["brief_id"]
    assert brief["linked_accounts"] == clean["linked_accounts"]
