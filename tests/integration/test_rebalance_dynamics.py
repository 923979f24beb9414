"""A rebalance while model calls are in flight, and what a rebalance does to state.

The first worker is briefing cases with a model that takes seconds when a second worker
joins. With aiokafka every rebalance revokes every partition: the first worker must go
on consuming afterwards (a cancelled model task once stopped its fetcher for good while
/readyz stayed green), use the answers of calls whose partitions it kept, and abandon
only the others. And its state follows its partitions: the partitions it keeps read no
changelog record again, the keys of those it lost leave its memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import free_port, stop_child
from tests.integration.conftest import WorkerHandle, published_briefs, start_worker
from tests.integration.test_scale_out import _round
from tests.llm_stub import StubInThread

pytestmark = pytest.mark.integration


def _model_env(env: dict[str, str], url: str) -> dict[str, str]:
    return {
        **env,
        "STREAMPROC_LLM_PROVIDER": "openai",
        "STREAMPROC_LLM_BASE_URL": f"{url}/v1",
        "STREAMPROC_LLM_MODEL": "stub-gpt",
        "STREAMPROC_LLM_API_KEY": "sk-test-secret",
        "STREAMPROC_LLM_TIMEOUT_S": "30",
        "STREAMPROC_LLM_CASE_DEADLINE_S": "60",
    }


def _publish_round(settings: Settings, i: int) -> set[str]:
    txns, sigs, alerts = _round(i, int(time.time() * 1000))
    publish_events(settings, "fraud.transactions.v1", txns)
    publish_events(settings, "fraud.device-signals.v1", sigs)
    publish_events(settings, "fraud.alerts.v1", alerts)
    return {a["case_id"] for a in alerts}


def _wait_briefed(settings: Settings, expected: set[str], timeout_s: float) -> set[str]:
    deadline, seen = time.monotonic() + timeout_s, set()
    while time.monotonic() < deadline and not expected <= seen:
        seen = {str(b["case_id"]) for b in published_briefs(settings)}
        time.sleep(0.5)
    return seen


def test_a_rebalance_with_model_calls_in_flight_stops_no_worker(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    with StubInThread(delay_s=4.0) as stub:
        first = start_worker(_model_env(env, stub.url), tmp_path / "w1.log")
        second: WorkerHandle | None = None
        try:
            expected = _publish_round(settings, 0) | _publish_round(settings, 1)
            deadline = time.monotonic() + 30
            while stub.concurrent < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert stub.concurrent >= 2, "no model calls in flight"
            env2 = {
                **_model_env(env, stub.url),
                "STREAMPROC_HTTP_PORT": str(free_port()),
                "STREAMPROC_DATA_DIR": str(tmp_path / "state2"),
            }
            second = start_worker(env2, tmp_path / "w2.log")  # the rebalance, mid-call
            seen = _wait_briefed(settings, expected, 90)
            assert expected <= seen, (expected - seen, first.log.read_text()[-2000:])
            # After the rebalance, both go on consuming: new cases on every partition.
            consumed = [w.metric("streamproc_events_consumed_total") for w in (first, second)]
            later = _publish_round(settings, 2) | _publish_round(settings, 3)
            seen = _wait_briefed(settings, later, 60)
            assert later <= seen, (later - seen, first.log.read_text()[-3000:])
            after = [w.metric("streamproc_events_consumed_total") for w in (first, second)]
            assert all(b > a for a, b in zip(consumed, after, strict=True)), (consumed, after)
            assert first.get("/readyz").status_code == 200
            # Calls were not paid twice for the partitions the first worker kept.
            abandoned = first.metric("streamproc_llm_calls_abandoned_total")
            first_round = len(expected)
            asked = len({r["body"]["messages"][1]["content"] for r in stub.requests})
            print(
                f"model requests {len(stub.requests)} ({asked} distinct), cases "
                f"{first_round + len(later)}, abandoned by the first worker {abandoned}"
            )
            assert len(stub.requests) <= first_round + len(later) + abandoned
        finally:
            for handle in (second, first):
                if handle is not None:
                    stop_child(handle.proc, 30.0)
        assert first.proc.returncode == 0 and (second is None or second.proc.returncode == 0)


def test_a_partition_kept_through_a_rebalance_is_not_restored_again_and_a_lost_one_leaves(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    first = start_worker(env, tmp_path / "w1.log")
    second: WorkerHandle | None = None
    try:
        expected = set()
        for i in range(6):
            expected |= _publish_round(settings, i)
        assert expected <= _wait_briefed(settings, expected, 60)
        time.sleep(3)  # the state sweep's gauges
        restored = first.metric("streamproc_state_restored_records_total")
        windows = first.metric("streamproc_state_entries", table="windows")
        env2 = {**env, "STREAMPROC_HTTP_PORT": str(free_port()),
                "STREAMPROC_DATA_DIR": str(tmp_path / "state2")}  # fmt: skip
        second = start_worker(env2, tmp_path / "w2.log")
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and second.metric("streamproc_state_entries", table="windows") == 0
        ):
            time.sleep(0.5)
        time.sleep(3)
        reread = first.metric("streamproc_state_restored_records_total") - restored
        kept = first.metric("streamproc_state_entries", table="windows")
        moved = second.metric("streamproc_state_entries", table="windows")
        print(f"windows before {windows}, kept {kept}, moved {moved}; re-read {reread}")
        assert moved > 0 and kept > 0
        assert kept + moved == windows  # the lost partitions' keys left the first worker
        assert reread == 0  # the kept partitions were not read again
    finally:
        for handle in (second, first):
            if handle is not None:
                stop_child(handle.proc, 30.0)
