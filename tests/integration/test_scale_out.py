"""Two workers in one group: a rebalance mid-stream loses no case and briefs none twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import free_port, stop_child
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import WorkerHandle, published_briefs, start_worker

pytestmark = pytest.mark.integration
ROUNDS = 6  # six copies of the scenario under distinct account and case ids


def _round(i: int, now_ms: int) -> tuple[list, list, list]:  # type: ignore[type-arg]
    sc = build_scenario(seed=100 + i, now_ms=now_ms)

    def tag(e: dict) -> dict:  # type: ignore[type-arg]
        out = {**e, "account_id": f"{e['account_id']}-r{i}", "event_id": f"{e['event_id']}-r{i}"}
        if "case_id" in e:
            out["case_id"] = f"{e['case_id']}-r{i}"
        return out

    return (
        [tag(e) for e in sc.transactions],
        [tag(e) for e in sc.signals],
        [tag(e) for e in sc.alerts],
    )


def test_second_worker_joins_mid_stream(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    first = start_worker(env, tmp_path / "w1.log")
    env2 = {
        **env,
        "STREAMPROC_HTTP_PORT": str(free_port()),
        "STREAMPROC_DATA_DIR": str(tmp_path / "state2"),
    }
    second: WorkerHandle | None = None
    expected: set[str] = set()
    try:
        now = int(time.time() * 1000)
        for i in range(ROUNDS):
            txns, sigs, alerts = _round(i, now)
            publish_events(settings, "fraud.transactions.v1", txns)
            publish_events(settings, "fraud.device-signals.v1", sigs)
            publish_events(settings, "fraud.alerts.v1", alerts)
            expected |= {a["case_id"] for a in alerts}
            if i == 1:
                second = start_worker(env2, tmp_path / "w2.log")  # rebalance while cases settle
        deadline = time.monotonic() + 90
        seen: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            seen = published_briefs(settings)
            if {b["case_id"] for b in seen} >= expected:
                break
        time.sleep(3.0)  # duplicates, if any, would follow the first briefs closely
        seen = published_briefs(settings)
        assert {b["case_id"] for b in seen} == expected
        per_content = Counter((b["case_id"], b["brief_id"]) for b in seen)
        assert max(per_content.values()) == 1, [k for k, n in per_content.items() if n > 1]
        assert second is not None and second.proc.poll() is None and first.proc.poll() is None
        by_worker = [w.metric("streamproc_briefs_published_total") for w in (first, second)]
        print("briefs per worker:", by_worker)
        assert sum(by_worker) == len(seen)
        assert min(by_worker) > 0, "the second worker took no share of the work"
    finally:
        for handle in (second, first):
            if handle is not None:
                stop_child(handle.proc, 20.0)
