"""/readyz tells the truth: each way a worker can stop doing its work while its process
lives turns the probe red, and names the check. Against the worker's own readiness
(its Health fed from the worker's consumer, changelog and progress), each one broken."""

from __future__ import annotations

import time

import pytest

from streamproc.ops.health import CONSUME_STALL_S, FETCH_STALL_S, STATE_STALL_S, Health
from tests.unit.test_worker_gates import _worker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def worker():  # type: ignore[no-untyped-def]
    w = _worker()
    w.health.started = w.health.broker_ok = w._serving = True
    w.app.consumer.loop_turned_at = time.monotonic()
    return w


def test_a_running_worker_is_ready(worker) -> None:  # type: ignore[no-untyped-def]
    ok, checks = worker.readiness()
    assert ok, checks


def test_a_stopped_fetcher_turns_it_red(worker) -> None:  # type: ignore[no-untyped-def]
    worker.app.consumer.loop_turned_at = time.monotonic() - FETCH_STALL_S - 1
    ok, checks = worker.readiness()
    assert not ok and checks["fetching"] is False


def test_state_that_cannot_be_written_turns_it_red(worker) -> None:  # type: ignore[no-untyped-def]
    worker.changelog._sealed_at[1] = time.monotonic() - STATE_STALL_S - 1  # undelivered
    ok, checks = worker.readiness()
    assert not ok and checks["state_writable"] is False
    worker.changelog._sealed_at.clear()
    worker.changelog.failed = True  # a delivery failed: the worker is on its way out
    assert worker.readiness()[1]["state_writable"] is False


def test_holding_partitions_and_consuming_nothing_while_lag_grows_turns_it_red(
    worker,  # type: ignore[no-untyped-def]
) -> None:
    clock = Clock()
    worker.health = Health(clock)
    worker.health.started = worker.health.broker_ok = True
    for lag in (10, 50, 200):  # records wait, nothing is handled
        worker.health.observe_progress(500, lag, holding=True, rebalancing=False)
        clock.now += CONSUME_STALL_S / 2
    ok, checks = worker.readiness()
    assert not ok and checks["consuming"] is False
    worker.health.observe_progress(600, 150, holding=True, rebalancing=False)  # it moves
    assert worker.readiness()[1]["consuming"] is True
    clock.now += 2 * CONSUME_STALL_S  # idle with nothing to read: that is fine
    worker.health.observe_progress(600, 0, holding=True, rebalancing=False)
    assert worker.readiness()[0]


def test_a_registry_that_does_not_answer_turns_it_red(worker) -> None:  # type: ignore[no-untyped-def]
    worker.health.registry_ok = False
    ok, checks = worker.readiness()
    assert not ok and checks["registry_reachable"] is False
