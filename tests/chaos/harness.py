"""The chaos suite's machinery: a group of workers on the embedded broker, a stand-in model
that takes seconds and sometimes hangs, alerts that keep arriving, and disturbances put
inside the dynamics (a model call, the writes after an answer, a batch).

The oracles share no code with the engine. What was published is what this harness
produced (alert ids, and the end offsets of the inputs when a disturbance struck); what
was briefed is read back from the analysts' topic; what was consumed is the group's
committed offsets, read from the broker without joining the group.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import free_port, spawn_child
from streamproc.sim.scenario import build_scenario
from tests.flood import max_transfer

INPUTS = ("fraud.transactions.v1", "fraud.device-signals.v1", "fraud.alerts.v1")
GROUP = "streamproc"


def worker_env(bootstrap: str, stub_url: str, data_dir: Path, name: str) -> dict[str, str]:
    """A worker of the group: short group timings, a slow model with a short deadline.
    Its API key names it, so the stand-in knows whose call is in flight."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    return {
        **base,
        "STREAMPROC_KAFKA_BOOTSTRAP": bootstrap,
        "STREAMPROC_HTTP_PORT": str(free_port()),
        "STREAMPROC_DATA_DIR": str(data_dir / name),
        "STREAMPROC_CASE_SETTLE_S": "1",
        "STREAMPROC_CASE_MAX_WAIT_S": "5",
        "STREAMPROC_BROKER_REBALANCE_TIMEOUT_S": "2",
        "STREAMPROC_BROKER_SESSION_TIMEOUT_S": "6",
        "STREAMPROC_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
        "STREAMPROC_LLM_PROVIDER": "openai",
        "STREAMPROC_LLM_BASE_URL": f"{stub_url}/v1",
        "STREAMPROC_LLM_MODEL": "stub-gpt",
        "STREAMPROC_LLM_API_KEY": f"sk-chaos-{name}",
        "STREAMPROC_LLM_TIMEOUT_S": "4",
        "STREAMPROC_LLM_MAX_RETRIES": "1",
        "STREAMPROC_LLM_CASE_DEADLINE_S": "8",
        "STREAMPROC_LLM_QUEUE_MAX_WAIT_S": "10",
        "STREAMPROC_SHUTDOWN_GRACE_S": "5",
        "STREAMPROC_LOG_LEVEL": "info",
    }


@dataclass
class Worker:
    name: str
    env: dict[str, str]
    log: Path
    proc: Any = None
    exits: list[int] = field(default_factory=list)  # every exit code, in order
    killed: int = 0  # times this harness killed it with SIGKILL

    @property
    def port(self) -> int:
        return int(self.env["STREAMPROC_HTTP_PORT"])

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def caller(self) -> str:
        return f"Bearer {self.env['STREAMPROC_LLM_API_KEY']}"

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = spawn_child([sys.executable, "-m", "streamproc", "worker"],
                                    env=self.env, log=fh)  # fmt: skip

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready in {timeout_s:g}s")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.exits.append(self.proc.wait(30))
        self.killed += 1

    def terminate(self, timeout_s: float = 40) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self.exits.append(code)
        return int(code)

    def consumed(self) -> float | None:
        """Its own count of input records consumed (None: it does not answer)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith("streamproc_events_consumed_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Load:
    """Alerts that keep arriving: a round of the scenario (four cases, about 40 events)
    under fresh ids every `every_s`, from a thread. Keeps every alert id it published,
    with when."""

    def __init__(self, settings: Settings, every_s: float, seed: int = 1) -> None:
        self.settings, self.every_s = settings, every_s
        self.alerts: dict[str, float] = {}  # alert id → when it was published
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._round = 0
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def burst(self, rounds: int) -> None:
        for _ in range(rounds):
            self.publish_round()

    def publish_round(self) -> None:
        with self.lock:
            i = self._round
            self._round += 1
        sc = build_scenario(seed=1000 + i, now_ms=int(time.time() * 1000))

        def tag(e: dict[str, Any]) -> dict[str, Any]:
            out = {
                **e,
                "account_id": f"{e['account_id']}-c{i}",
                "event_id": f"{e['event_id']}-c{i}",
            }
            if "case_id" in e:
                out["case_id"] = f"{e['case_id']}-c{i}"
                out["alert_id"] = f"{e['alert_id']}-c{i}"
            return out

        publish_events(self.settings, INPUTS[0], [tag(e) for e in sc.transactions])
        publish_events(self.settings, INPUTS[1], [tag(e) for e in sc.signals])
        alerts = [tag(e) for e in sc.alerts]
        publish_events(self.settings, INPUTS[2], alerts)
        now = time.monotonic()
        with self.lock:
            self.alerts.update({a["alert_id"]: now for a in alerts})

    def published_before(self, t: float) -> set[str]:
        with self.lock:
            return {a for a, at in self.alerts.items() if at <= t}

    def _run(self) -> None:
        while not self._stop.wait(self.every_s * self._rng.uniform(0.5, 1.5)):
            self.publish_round()


def flood(settings: Settings, account: str, n: int) -> str:
    """An account flooded with contract-valid records at the size limits, and its alert."""
    now = int(time.time() * 1000)
    records = [max_transfer(account, i, now - 3600_000 + i * 1000) for i in range(n)]
    publish_events(settings, INPUTS[0], records)
    alert = {
        "event_id": f"evt-alert-{account}", "alert_id": f"alr-{account}",
        "case_id": f"case-{account}", "account_id": account, "occurred_at": now,
        "rule_id": "R-FLOOD", "rule_name": "flood", "severity": "HIGH",
        "transaction_ids": [records[-1]["transaction_id"]],
    }  # fmt: skip
    publish_events(settings, INPUTS[2], [alert])
    return str(alert["alert_id"])


class Offsets:
    """The inputs' end offsets, and the group's committed offsets, from the broker."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP,
                                  "enable.auto.commit": False})  # fmt: skip
        meta = self.consumer.list_topics(timeout=10).topics
        self.tps = [TopicPartition(t, p) for t in INPUTS for p in meta[t].partitions]

    def ends(self) -> dict[tuple[str, int], int]:
        out = {}
        for tp in self.tps:
            _, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            out[(tp.topic, tp.partition)] = high
        return out

    def committed(self) -> dict[tuple[str, int], int]:
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in self.consumer.committed(self.tps, timeout=10)
        }

    def caught_up_with(self, ends: dict[tuple[str, int], int]) -> bool:
        committed = self.committed()
        return all(committed.get(k, -1) >= n for k, n in ends.items())

    def close(self) -> None:
        self.consumer.close()


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.25) -> float | None:
    """Seconds until `check()` held, or None if it did not within `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(poll_s)
    return None
