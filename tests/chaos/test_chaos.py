"""Chaos: three workers, a model that takes 1-3 s and sometimes hangs, alerts that keep
arriving, and workers killed -9, SIGTERMed, restarted and added at points inside the
dynamics: during a model call, just after an answer came back (the worker is storing it,
publishing, persisting), and inside a burst of input. An account flooded with records at
the size limits sits among them.

After each disturbance it prints the recovery time: from the disturbance until every
record on the inputs at that moment is consumed and committed by the group, and every
alert published before it has a brief. `make chaos` runs it long (at least ten kills of
one of three workers); `make test` runs a short smoke of it.

Oracles, none sharing code with the engine: every alert id the harness published appears
in a published brief; no two brief ids for the same case content; recovery within
RECOVERY_MAX_S after each disturbance; every worker that stayed up kept consuming; RSS
stays under RSS_MAX_MIB; no worker exits non-zero but by the harness's SIGKILL.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamproc.cli.kafkaio import read_records
from streamproc.config import Settings
from streamproc.contracts.topics import load_topics
from streamproc.kafka.admin import admin_client, apply_topics
from streamproc.kafka.broker import EmbeddedBroker
from tests.chaos.harness import Load, Offsets, Worker, flood, wait_until, worker_env
from tests.llm_stub import StubInThread

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
FULL = os.environ.get("STREAMPROC_CHAOS_SCALE") == "full"
KILLS = 12 if FULL else 2  # kill -9 of one of three
RECOVERY_MAX_S = 60.0  # a disturbance not recovered from in this long fails the run
KILL_RECOVERY_TARGET_S = 30.0  # what the kill -9 of one of three must stay under
RSS_MAX_MIB = 1536
FLOOD_ACCOUNT, FLOOD_RECORDS = "acct-flood-chaos", 150
KINDS = ("kill9-model-call", "kill9-after-answer", "kill9-in-batch")


def slow_model(rng: random.Random) -> float | None:
    """1-3 s an answer; one call in 20 hangs (the client's timeout ends it)."""
    return None if rng.random() < 0.05 else rng.uniform(1.0, 3.0)


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "broker.log").running() as b:
        yield b


def test_the_group_keeps_briefing_through_kills_restarts_and_joins(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap)
    apply_topics(admin_client(settings), load_topics())
    rng = random.Random(23)
    with StubInThread(delay_fn=lambda: slow_model(rng)) as stub:
        workers = [
            Worker(n, worker_env(broker.bootstrap, stub.url, tmp_path, n), tmp_path / f"{n}.log")
            for n in ("w1", "w2", "w3")
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        offsets = Offsets(broker.bootstrap)
        load = Load(settings, every_s=1.5)
        flooded = flood(settings, FLOOD_ACCOUNT, FLOOD_RECORDS)
        load.start()
        recoveries: dict[str, list[float]] = defaultdict(list)
        rss: list[float] = []
        try:
            time.sleep(8)  # every worker busy: model calls in flight, state written
            plan = [KINDS[i % len(KINDS)] for i in range(KILLS)]
            plan.insert(1, "sigterm-restart")
            plan.append("add-then-remove")
            for kind in plan:
                took = _disturb(kind, workers, stub, load, offsets, rng, tmp_path, broker)
                recoveries[kind.split("-")[0]].append(took)
                rss += [w.rss_mib() for w in workers if w.alive]
                print(f"{kind}: recovered in {took:.1f} s")
            load.stop()
            everything = load.published_before(time.monotonic()) | {flooded}
            briefs = _briefed(settings, everything, timeout_s=90)
            _diagnose(settings, workers, everything, briefs)
        finally:
            load.stop()
            offsets.close()
            codes = {w.name: w.terminate() for w in workers if w.alive}
        _report(recoveries, rss)
        _check_every_alert_briefed_once_per_content(briefs, everything)
        _check_flooded_case(briefs, flooded)
        assert all(code == 0 for code in codes.values()), codes
        for w in workers:  # non-zero only where the harness sent SIGKILL
            assert [c for c in w.exits if c != 0] == [-9] * w.killed, (w.name, w.exits)
        assert max(rss) < RSS_MAX_MIB, max(rss)
        kills = recoveries["kill9"]
        assert max(kills) < KILL_RECOVERY_TARGET_S, kills


def _disturb(
    kind: str,
    workers: list[Worker],
    stub: Any,
    load: Load,
    offsets: Offsets,
    rng: random.Random,
    tmp_path: Path,
    broker: EmbeddedBroker,
) -> float:
    """One disturbance; returns the seconds until the group recovered from it."""
    alive = [w for w in workers if w.alive]
    victim = rng.choice(alive)
    before = {w.name: w.consumed() for w in alive}
    if kind == "kill9-model-call":
        assert wait_until(lambda: stub.in_flight_by.get(victim.caller, 0) > 0, 30)
        struck = _strike(victim.kill9, offsets)
    elif kind == "kill9-after-answer":
        last = stub.answered_at.get(victim.caller, 0.0)
        assert wait_until(lambda: stub.answered_at.get(victim.caller, 0.0) > last, 30, 0.002)
        time.sleep(rng.uniform(0.0, 0.05))  # storing the answer, publishing, persisting
        struck = _strike(victim.kill9, offsets)
    elif kind == "kill9-in-batch":
        load.burst(8)  # about 300 records at once
        time.sleep(rng.uniform(0.0, 0.2))
        struck = _strike(victim.kill9, offsets)
    elif kind == "sigterm-restart":
        struck = _strike(lambda: _graceful(victim), offsets)
    else:  # a fourth worker joins, then leaves again
        extra = Worker("w4", worker_env(broker.bootstrap, stub.url, tmp_path, "w4"),
                       tmp_path / "w4.log")  # fmt: skip
        workers.append(extra)
        struck = _strike(extra.start, offsets)
        took = _recovered(struck, load, offsets)
        extra.wait_ready()
        assert extra.terminate() == 0
        return took
    took = _recovered(struck, load, offsets)
    _check_kept_consuming([w for w in alive if w is not victim], before)
    victim.start()  # the same worker comes back (a container restart)
    victim.wait_ready()
    return took


def _graceful(victim: Worker) -> None:
    assert victim.terminate() == 0


def _strike(action: Any, offsets: Offsets) -> tuple[float, dict[tuple[str, int], int]]:
    action()
    return time.monotonic(), offsets.ends()


def _recovered(
    struck: tuple[float, dict[tuple[str, int], int]], load: Load, offsets: Offsets
) -> float:
    at, ends = struck
    alerts = load.published_before(at)
    settings = load.settings

    def done() -> bool:
        if not offsets.caught_up_with(ends):
            return False
        briefed = {a for b in _all_briefs(settings) for a in b["alert_ids"]}
        return alerts <= briefed

    took = wait_until(done, RECOVERY_MAX_S, poll_s=0.5)
    if took is None:
        committed = offsets.committed()
        behind = {k: (committed.get(k), n) for k, n in ends.items() if committed.get(k, -1) < n}
        briefed = {a for b in _all_briefs(settings) for a in b["alert_ids"]}
        missing = sorted(alerts - briefed)
        _state_of(settings, set(missing))
        raise AssertionError(
            f"not recovered in {RECOVERY_MAX_S:g}s: behind (committed, end) {behind}; "
            f"{len(missing)} alerts without a brief: {missing[:10]}"
        )
    return time.monotonic() - at


def _check_kept_consuming(alive: list[Worker], before: dict[str, float | None]) -> None:
    for w in alive:
        now = w.consumed()
        assert now is not None and before[w.name] is not None, w.name
        assert now > before[w.name], f"{w.name} stopped consuming ({before[w.name]} → {now})"  # type: ignore[operator]


def _all_briefs(settings: Settings) -> list[dict[str, Any]]:
    return list(read_records(settings, settings.topics.briefs, timeout_s=60, to_end=True))


def _briefed(settings: Settings, alerts: set[str], timeout_s: float) -> list[dict[str, Any]]:
    briefs: list[dict[str, Any]] = []

    def all_in() -> bool:
        nonlocal briefs
        briefs = _all_briefs(settings)
        return alerts <= {a for b in briefs for a in b["alert_ids"]}

    wait_until(all_in, timeout_s, poll_s=1.0)
    return briefs


def _diagnose(
    settings: Settings, workers: list[Worker], alerts: set[str], briefs: list[dict[str, Any]]
) -> None:
    """When an alert went unbriefed: what the workers and the state topics say of it."""
    missing = alerts - {a for b in briefs for a in b["alert_ids"]}
    if not missing:
        return
    for w in workers:
        if w.alive:
            text = httpx.get(f"http://127.0.0.1:{w.port}/metrics", timeout=5).text
            wanted = ("streamproc_cases_pending ", "streamproc_llm_in_flight ",
                      "streamproc_llm_queue_depth ", "streamproc_consumer_lag{")  # fmt: skip
            print(w.name, [line for line in text.splitlines() if line.startswith(wanted)])
    _state_of(settings, missing)


def _state_of(settings: Settings, alerts: set[str]) -> None:
    """The state records and input records that mention the alerts' rounds."""
    rounds = {a.rsplit("-c", 1)[-1] for a in alerts}
    topics = ("streamproc-pending-changelog", "streamproc-cases-changelog", "fraud.alerts.v1")
    for topic in topics:
        for r in read_records(settings, topic, timeout_s=60, to_end=True):
            text = str(r)
            if any(a in text for a in alerts) or (
                "changelog" in topic and any(f'-c{n}"' in text or f"-c{n}'" in text for n in rounds)
            ):
                print(topic, r.get("partition"), r.get("offset"), text[:400])


def _check_every_alert_briefed_once_per_content(
    briefs: list[dict[str, Any]], alerts: set[str]
) -> None:
    briefed = {a for b in briefs for a in b["alert_ids"]}
    assert alerts <= briefed, f"alerts never briefed: {sorted(alerts - briefed)}"
    ids_by_content: dict[Any, set[str]] = defaultdict(set)
    for b in briefs:
        content = (
            b["case_id"],
            tuple(sorted(b["alert_ids"])),
            tuple(sorted(t["event_id"] for t in b["timeline"])),
            tuple(sorted(b["counts"].items())),
        )
        ids_by_content[content].add(b["brief_id"])
    twice = {c: ids for c, ids in ids_by_content.items() if len(ids) > 1}
    assert not twice, f"{len(twice)} case contents got more than one brief id"


def _check_flooded_case(briefs: list[dict[str, Any]], flooded: str) -> None:
    mine = [b for b in briefs if flooded in b["alert_ids"]]
    assert mine, "the flooded account's case was never briefed"
    gaps = [g for b in mine for g in b["data_gaps"]]
    assert any("record size limit" in g for g in gaps), gaps


def _report(recoveries: dict[str, list[float]], rss: list[float]) -> None:
    for kind, times in sorted(recoveries.items()):
        q = sorted(times)
        print(
            f"recovery after {kind} ({len(q)}): min {q[0]:.1f} s, median "
            f"{statistics.median(q):.1f} s, max {q[-1]:.1f} s; all: "
            + ", ".join(f"{t:.1f}" for t in times)
        )
    if rss:
        print(f"worker RSS: max {max(rss):.0f} MiB")
