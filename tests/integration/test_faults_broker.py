"""Fault suite, broker: the broker unreachable for 20 s, then back.

The embedded broker keeps its data in memory only, so stopping its process would lose
every topic, committed offset and producer id: no real Kafka deployment behaves like
that. Instead the worker reaches the broker through a TCP proxy (the broker advertises
the proxy's address), and the test cuts the proxy: open connections are reset and new
ones refused, exactly what clients see of a stopped broker, while the broker process and
its storage live on, as a real broker's disks do across a restart.

While the broker is away /readyz must say not ready and the worker must stay up; the
upstream producer keeps producing into its own buffer. When the broker is back the
worker must reconnect by itself, rejoin its group, take the backlog, brief every new
case once, never re-brief the cases it had briefed before, and say ready again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from streamproc.cli.kafkaio import make_codec
from streamproc.config import Settings
from streamproc.kafka.broker import EmbeddedBroker, free_port, stop_child
from streamproc.kafka.clients import producer_config
from streamproc.sim.labelled import EvalSet, build_eval_set
from tests.integration.conftest import (
    WorkerHandle,
    cli,
    fault_env,
    in_event_time,
    produce_events,
    published_briefs,
    start_worker,
)
from tests.proxy import Proxy

pytestmark = [pytest.mark.integration, pytest.mark.faults]
FULL = os.environ.get("STREAMPROC_FAULT_SCALE") == "full"
NOT_READY_WITHIN_S = 8.0  # the broker probe runs every 5 s with a 2 s connect timeout
# Past the readiness probe's window and the session timeout (6 s) either way.
OUTAGE_S = 20.0 if FULL else 12.0


def _produce(producer: Producer, settings: Settings, s: EvalSet) -> int:
    """Queue every event of the set in event-time order; the caller flushes."""
    return produce_events(producer, make_codec(settings), in_event_time(s))


def _briefs(settings: Settings, prefix: str) -> list[dict[str, Any]]:
    return [b for b in published_briefs(settings) if b["case_id"].startswith(prefix)]


def _readyz(worker: WorkerHandle) -> int | str:
    try:
        return worker.get("/readyz").status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def _wait_briefed(settings: Settings, prefix: str, n: int, timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = _briefs(settings, prefix)
        if len({b["case_id"] for b in got}) >= n:
            return got
        assert time.monotonic() < deadline, f"{prefix}: {len(got)} of {n} cases briefed"
        time.sleep(1.0)


def test_broker_away_20s_worker_reconnects_and_catches_up(tmp_path: Path) -> None:
    front = free_port()
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log", advertised=f"127.0.0.1:{front}")
    with broker.running(), Proxy(("127.0.0.1", broker.port), front) as proxy:
        bootstrap = f"127.0.0.1:{front}"
        env = fault_env(bootstrap, tmp_path, "worker")
        assert cli(env, "topics", "apply").returncode == 0
        settings = Settings(kafka_bootstrap=bootstrap)
        worker = start_worker(env, tmp_path / "worker.log")
        producer = Producer(producer_config(settings))
        try:
            now = lambda: int(time.time() * 1000) - 60_000  # noqa: E731
            before = build_eval_set(seed=31, per_kind=1, now_ms=now(), tag="before-")
            _produce(producer, settings, before)
            assert producer.flush(30.0) == 0
            briefed_before = _wait_briefed(settings, "case-before-", len(before.labels), 90)

            proxy.cut()
            cut_at = time.monotonic()
            during = build_eval_set(seed=32, per_kind=1, now_ms=now(), tag="during-")
            queued = _produce(producer, settings, during)  # held by the producer meanwhile
            samples: list[tuple[float, int | str]] = []
            while (away := time.monotonic() - cut_at) < OUTAGE_S:
                samples.append((round(away, 1), _readyz(worker)))
                assert worker.proc.poll() is None, "the worker exited while the broker was away"
                time.sleep(0.5)
            proxy.restore()
            restored_at = time.monotonic()

            late = [code for t, code in samples if t >= NOT_READY_WITHIN_S]
            assert late and all(code == 503 for code in late), samples
            first_503 = next(t for t, code in samples if code == 503)

            assert producer.flush(60.0) == 0, "the upstream backlog was not delivered"
            after = build_eval_set(seed=33, per_kind=1, now_ms=now(), tag="after-")
            _produce(producer, settings, after)
            assert producer.flush(30.0) == 0
            during_briefs = _wait_briefed(settings, "case-during-", len(during.labels), 120)
            after_briefs = _wait_briefed(settings, "case-after-", len(after.labels), 60)
            caught_up_in = time.monotonic() - restored_at

            deadline = time.monotonic() + 60
            while (code := _readyz(worker)) != 200:
                assert time.monotonic() < deadline, f"/readyz {code} after the broker came back"
                time.sleep(0.5)
            ready_in = time.monotonic() - restored_at
            assert worker.proc.poll() is None, "the worker restarted instead of reconnecting"

            # Once each: nothing re-briefed after the rejoin, no case briefed twice.
            assert len(_briefs(settings, "case-before-")) == len(briefed_before)
            for got in (during_briefs, after_briefs):
                assert len(got) == len({b["case_id"] for b in got}), got
            assert worker.metric("streamproc_dlq_published_total") == 0
        finally:
            stop_child(worker.proc, 30.0)
    print(
        f"\nbroker away {OUTAGE_S:.0f} s: /readyz 503 from {first_503:.1f} s after the cut; "
        f"{queued} events queued upstream meanwhile; after it came back every case briefed in "
        f"{caught_up_in:.1f} s and /readyz 200 in {ready_in:.1f} s, by the same worker process"
    )
