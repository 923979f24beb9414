"""Integration fixtures: a real embedded broker per test, the real CLI, a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamproc.cli.kafkaio import read_records
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json, parse_timestamp
from streamproc.kafka.broker import EmbeddedBroker, free_port, spawn_child, stop_child
from streamproc.sim.labelled import EvalSet

pytestmark = pytest.mark.integration
READY_TIMEOUT_S = 60.0


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "broker.log").running() as b:
        yield b


@pytest.fixture()
def env(broker: EmbeddedBroker, tmp_path: Path) -> dict[str, str]:
    return worker_env(broker.bootstrap, tmp_path)


def worker_env(bootstrap: str, tmp_path: Path) -> dict[str, str]:
    """A worker's and the CLI's environment for tests: short settle and group timings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    return {
        **base,
        "STREAMPROC_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMPROC_HTTP_PORT": str(free_port()),
        "STREAMPROC_CASE_SETTLE_S": "1",
        "STREAMPROC_BROKER_REBALANCE_TIMEOUT_S": "2",
        "STREAMPROC_BROKER_SESSION_TIMEOUT_S": "6",
        "STREAMPROC_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
        "STREAMPROC_DATA_DIR": str(tmp_path / "state"),
    }


@pytest.fixture()
def settings(env: dict[str, str]) -> Settings:
    return Settings(kafka_bootstrap=env["STREAMPROC_KAFKA_BOOTSTRAP"])


def cli(
    env: dict[str, str], *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run the real `streamproc` command."""
    return subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def tail_json(
    env: dict[str, str], topic: str, n: int, timeout: float = 90.0
) -> list[dict[str, Any]]:
    result = cli(
        env, "tail", topic, "--max", str(n), "--timeout", str(timeout), timeout=timeout + 30
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def published_briefs(settings: Settings) -> list[dict[str, Any]]:
    """Every brief on the analysts' topic now: read to the end, not for a fixed time."""
    return list(read_records(settings, settings.topics.briefs, timeout_s=60, to_end=True))


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


@pytest.fixture()
def topics(env: dict[str, str]) -> None:
    result = cli(env, "topics", "apply")
    assert result.returncode == 0, result.stderr


@dataclass
class WorkerHandle:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5.0)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def start_worker(env: dict[str, str], log: Path) -> WorkerHandle:
    with log.open("ab") as fh:
        proc = spawn_child([sys.executable, "-m", "streamproc", "worker"], env=env, log=fh)
    handle = WorkerHandle(proc, int(env["STREAMPROC_HTTP_PORT"]), log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if handle.get("/readyz").status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_child(proc)
    pytest.fail(f"worker not ready in {READY_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def worker(env: dict[str, str], topics: None, tmp_path: Path) -> Iterator[WorkerHandle]:
    handle = start_worker(env, tmp_path / "worker.log")
    yield handle
    stop_child(handle.proc, 20.0)


def fault_env(bootstrap: str, tmp_path: Path, name: str) -> dict[str, str]:
    """A worker's environment for the fault suite: short settle, wait and group timings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    return {
        **base,
        "STREAMPROC_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMPROC_HTTP_PORT": str(free_port()),
        "STREAMPROC_CASE_SETTLE_S": "1",
        "STREAMPROC_CASE_MAX_WAIT_S": "5",
        "STREAMPROC_BROKER_REBALANCE_TIMEOUT_S": "2",
        "STREAMPROC_BROKER_SESSION_TIMEOUT_S": "6",
        "STREAMPROC_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
        "STREAMPROC_DATA_DIR": str(tmp_path / f"state-{name}"),
    }


def in_event_time(s: EvalSet) -> list[tuple[str, dict[str, Any]]]:
    """(topic, event) for every event of a labelled set, in event-time order."""
    tagged = [("fraud.transactions.v1", e) for e in s.transactions]
    tagged += [("fraud.device-signals.v1", e) for e in s.signals]
    tagged += [("fraud.alerts.v1", e) for e in s.alerts]
    return sorted(tagged, key=lambda te: parse_timestamp(te[1]["occurred_at"], "occurred_at"))


def produce_events(
    producer: Any, codec: AvroCodec, events: list[tuple[str, dict[str, Any]]]
) -> int:
    """Queue (topic, event) pairs keyed by account, as upstream does; the caller flushes."""
    for topic, event in events:
        record = from_json(codec.schemas.for_topic(topic), event)
        producer.produce(topic, key=event["account_id"].encode(), value=codec.encode(topic, record))
        producer.poll(0)
    return len(events)
