"""Garbage on every input topic lands in the DLQ with its context; later good events are briefed."""

from __future__ import annotations

import base64
import time

import pytest

from streamproc.cli.kafkaio import produce_raw, publish_events
from streamproc.config import Settings
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import WorkerHandle, tail_json

pytestmark = pytest.mark.integration
INPUTS = ("fraud.transactions.v1", "fraud.device-signals.v1", "fraud.alerts.v1")


def test_garbage_goes_to_dlq_and_the_stream_keeps_going(
    env: dict[str, str], settings: Settings, worker: WorkerHandle
) -> None:
    garbage = {topic: f"garbage for {topic} \xff".encode("latin-1") for topic in INPUTS}
    for topic, value in garbage.items():
        produce_raw(settings, topic, b"acct-benign-001", value, headers=[("origin", b"test")])

    sc = build_scenario(seed=3, now_ms=int(time.time() * 1000))
    pick = lambda evs: [e for e in evs if e["account_id"] == "acct-benign-001"]  # noqa: E731
    publish_events(settings, "fraud.transactions.v1", pick(sc.transactions))
    publish_events(settings, "fraud.device-signals.v1", pick(sc.signals))
    publish_events(settings, "fraud.alerts.v1", pick(sc.alerts))

    dead = tail_json(env, "fraud.dlq.v1", 3)
    by_topic = {d["headers"]["__connect.errors.topic"]: d for d in dead}
    assert set(by_topic) == set(INPUTS)
    for topic, record in by_topic.items():
        h = record["headers"]
        assert base64.b64decode(record["value_b64"]) == garbage[topic]
        assert record["key"] == "acct-benign-001"
        assert h["origin"] == "test"
        assert h["__connect.errors.exception.class.name"] == "EventDecodeError"
        assert "not Avro" in h["__connect.errors.exception.message"]
        assert h["__connect.errors.partition"].isdigit() and h["__connect.errors.offset"] == "0"
        assert h["streamproc.errors.reason"] == "decode_error"

    [brief] = tail_json(env, "fraud.case-briefs.v1", 1)
    assert brief["case_id"] == "case-benign-001"
    for topic in INPUTS:
        assert (
            worker.metric("streamproc_events_rejected_total", topic=topic, reason="decode_error")
            == 1
        )
    assert worker.metric("streamproc_dlq_published_total") == 3
    assert worker.proc.poll() is None
