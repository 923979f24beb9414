"""State and pending cases survive the worker: restored from changelogs, not from a replay."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import stop_child
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import WorkerHandle, published_briefs, start_worker, tail_json

pytestmark = pytest.mark.integration
ACCOUNT = "acct-ct-001"


def _wait_metric(
    worker: WorkerHandle, name: str, value: float, timeout: float = 30.0, **labels: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.metric(name, **labels) >= value:
            return
        time.sleep(0.2)
    pytest.fail(f"{name}{labels} did not reach {value}")


def _events(seed: int) -> tuple[list, list, list]:  # type: ignore[type-arg]
    sc = build_scenario(seed=seed, now_ms=int(time.time() * 1000))
    pick = lambda evs: [e for e in evs if e["account_id"] == ACCOUNT]  # noqa: E731
    return pick(sc.transactions), pick(sc.signals), pick(sc.alerts)


def test_window_state_is_restored_from_the_changelog(
    env: dict[str, str], settings: Settings, worker: WorkerHandle, tmp_path: Path
) -> None:
    txns, sigs, alerts = _events(5)
    publish_events(settings, "fraud.transactions.v1", txns)
    publish_events(settings, "fraud.device-signals.v1", sigs)
    _wait_metric(
        worker, "streamproc_events_consumed_total", len(txns), topic="fraud.transactions.v1"
    )
    time.sleep(4.0)  # > faust's 2.8 s commit interval: offsets are committed
    assert stop_child(worker.proc, 20.0) == 0  # graceful SIGTERM

    second = start_worker(env, tmp_path / "worker2.log")
    try:
        publish_events(settings, "fraud.alerts.v1", alerts)
        [brief] = tail_json(env, "fraud.case-briefs.v1", 1)
        assert brief["counts"]["transactions"] == len(txns)
        assert brief["counts"]["device_signals"] == len(sigs)
        assert "CARD_TESTING" in brief["reason_codes"]
        # Not a replay: the new worker did not consume the old transactions again.
        assert second.metric("streamproc_events_consumed_total", topic="fraud.transactions.v1") == 0
    finally:
        stop_child(second.proc, 20.0)


def test_case_pending_at_kill_9_is_briefed_by_the_next_worker(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    env = {**env, "STREAMPROC_CASE_SETTLE_S": "6"}
    first = start_worker(env, tmp_path / "worker1.log")
    txns, sigs, alerts = _events(9)
    publish_events(settings, "fraud.transactions.v1", txns)
    publish_events(settings, "fraud.device-signals.v1", sigs)
    publish_events(settings, "fraud.alerts.v1", alerts)
    _wait_metric(first, "streamproc_cases_pending", 1)
    time.sleep(3.5)  # the alert's offset and the pending entry are committed/written
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait()

    second = start_worker(env, tmp_path / "worker2.log")
    try:
        briefs = tail_json(env, "fraud.case-briefs.v1", 1, timeout=60)
        assert [b["case_id"] for b in briefs] == ["case-ct-001"]
        assert briefs[0]["counts"]["transactions"] == len(txns)
        _wait_metric(second, "streamproc_briefs_published_total", 1, method="FALLBACK")
        time.sleep(2.0)  # a duplicate would be published right after the first
        everything = published_briefs(settings)
        assert len(everything) == 1, "case briefed twice for the same content"
    finally:
        stop_child(second.proc, 20.0)
